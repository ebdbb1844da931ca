# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0: a CPU build lies on this project's CI disk; elsewhere pip takes the CUDA build from PyPI.
TORCH_SPEC ?= torch==2.13.0
# The DALI wheel must match torch's CUDA major version: `auto` installs torch first, reads torch.version.cuda
# and picks nvidia-dali-cuda130 for CUDA 13, nvidia-dali-cuda120 for CUDA 12 and for CPU-only torch.
# Override with e.g. `make test DALI_PACKAGE=nvidia-dali-cuda130`.
DALI_PACKAGE ?= auto
# one stamp per choice, so that changing DALI_PACKAGE reinstalls
STAMP := $(VENV)/.installed-$(DALI_PACKAGE)
PYTEST_ARGS ?=
# what `auto` resolves to: DALI publishes one wheel per CUDA major version, 12 and up
DALI_FOR_TORCH := import torch; v = torch.version.cuda; print("nvidia-dali-cuda%d0" % max(int(v.split(".")[0]) if v else 12, 12))

.PHONY: install demo test lint bench-smoke gpu-check clean-venv

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	@dali="$(DALI_PACKAGE)"; \
	if [ "$$dali" = auto ]; then dali=$$($(PY) -W ignore -c '$(DALI_FOR_TORCH)') || exit 1; fi; \
	echo "installing $$dali for torch $$($(PY) -W ignore -c 'import torch; print(torch.__version__)')"; \
	$(PIP) install -q -e ".[test,bench]" "$$dali"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) -m engine.demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# results go to a scratch folder; `$(PY) -m benchmarks.run --suite smoke --save` updates benchmarks/results/
bench-smoke: $(STAMP)
	$(PY) -m benchmarks.run --suite smoke

# on a CUDA machine, under 10 minutes: preflight, `pytest -m gpu`, the GPU demo, a short real-geometry benchmark
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check

clean-venv:
	rm -rf $(VENV)
