"""Small helpers every layer may use (the bottom layer: it imports nothing of the project).

- :mod:`utils.errors`: the one user-error type and the command-line wrapper that prints it.
- :mod:`utils.atomic`: the one atomic file writer (every file the project writes goes through it).
- :mod:`utils.progress`: the one progress meter (counts, rate, ETA on stderr) and duration formatting.
- :mod:`utils.cpus`: how many cores this process may use, shared among the ranks of a node.
"""
