# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0: a CPU build lies on this project's CI disk; elsewhere pip takes the CUDA build from PyPI.
TORCH_SPEC ?= torch==2.13.0
# CUDA 13 stacks: make DALI_PACKAGE=nvidia-dali-cuda130 ...
DALI_PACKAGE ?= nvidia-dali-cuda120
STAMP := $(VENV)/.installed-$(DALI_PACKAGE)
PYTEST_ARGS ?=

.PHONY: install demo test lint bench-smoke clean-venv

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	@if [ "$(DALI_PACKAGE)" = "nvidia-dali-cuda120" ]; then \
		$(PIP) install -q -e ".[test,bench]"; \
	else \
		$(PIP) install -q --no-deps -e . && $(PIP) install -q numpy pyyaml av pytest pytorchvideo fvcore iopath matplotlib "$(DALI_PACKAGE)"; \
	fi
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) -m engine.demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench-smoke: $(STAMP)
	$(PY) -m benchmarks.run --suite smoke

clean-venv:
	rm -rf $(VENV)
