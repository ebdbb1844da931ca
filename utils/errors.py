"""The one user-error type, and how a command-line tool reports it.

A :class:`UserError` is a mistake in what the user gave (a config value, a list, a weights file, the
environment a run was started in). Its message names the bad value and the fix, so a command-line tool
prints it as one ``error: ...`` line and exits with status 2, without a traceback. Every project error of
that kind derives from it (``configs.ConfigError``, ``pipelines.dataset.DatasetError``, ...); an error that
is a bug keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

# exit statuses of the command-line tools
EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """A mistake in the user's input or environment; the message says what is wrong and how to fix it."""


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None, *,
            interrupted_hint: str = "") -> int:
    """Run ``main(argv)`` as a command-line tool: a :class:`UserError` becomes ``error: ...`` and status 2.

    Args:
        main: returns the exit status (``None`` counts as 0).
        argv: the arguments (default: ``sys.argv[1:]``).
        interrupted_hint: appended to the message printed on Ctrl-C (status 130).
    """
    try:
        status = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted" + (f"; {interrupted_hint}" if interrupted_hint else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if status is None else int(status)
