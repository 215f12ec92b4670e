# Two commands on a fresh machine: `make demo` and `make test`.
# Both (re)build .venv from the pinned requirements when it is missing or stale:
# the stamp file is named after a hash of requirements.txt; a second, cheap stamp
# re-runs the editable install when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
PROJ_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
VENV_STAMP := $(VENV)/.stamp-req-$(REQ_HASH)
STAMP := $(VENV)/.stamp-proj-$(PROJ_HASH)-$(REQ_HASH)
# Some machines cap torch/torchvision with a global pip constraint file; the pins
# in requirements.txt are the constraint here.
export PIP_CONSTRAINT := /dev/null
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-fast lint bench bench-venvs clean-venv

venv: $(STAMP)

$(VENV_STAMP): requirements.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $(VENV_STAMP)

$(STAMP): $(VENV_STAMP) pyproject.toml
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# A small real sweep of expt_dln: generate commands, run them, tabulate and plot.
demo: $(STAMP)
	$(PY) -m tracking.demo

# The whole suite: fast tests, then the slow scientific-accuracy and SLURM checks.
test: $(STAMP)
	$(PY) -m pytest -m "" tests

# Only the fast tests (what plain `pytest` runs).
test-fast: $(STAMP)
	$(PY) -m pytest tests

# ruff (lint + import order, ruff.toml) in its own venv; CI runs it before the tests.
lint:
	bash .ci/lint.sh

# Benchmarks. Each devinterp version gets its own venv, .venv-bench/devinterp-X: the two
# cannot share one interpreter, and 2.0.1 brings ~25 packages the project does not use. Each is
# layered on .venv (a .pth line puts .venv's site-packages on its path, so torch is not
# installed twice) and installed with -c requirements.txt, so no pinned package moves.
BENCH_VENVS := .venv-bench

define bench_venv
$(BENCH_VENVS)/devinterp-$(1)/.stamp-$(shell sha256sum $(2) | cut -c1-16): $(STAMP) $(2)
	rm -rf $(BENCH_VENVS)/devinterp-$(1)
	$(PY) -m venv $(BENCH_VENVS)/devinterp-$(1)
	$(PY) -c "import site; print(site.getsitepackages()[0])" > \
		"$$$$($(BENCH_VENVS)/devinterp-$(1)/bin/python -c 'import site; print(site.getsitepackages()[0])')/_project_venv.pth"
	$(BENCH_VENVS)/devinterp-$(1)/bin/python -m pip install -q -c requirements.txt -r $(2)
	touch $$@
BENCH_STAMPS += $(BENCH_VENVS)/devinterp-$(1)/.stamp-$(shell sha256sum $(2) | cut -c1-16)
endef
$(eval $(call bench_venv,1.3.2,bench/requirements-bench.txt))
$(eval $(call bench_venv,2.0.1,bench/requirements-bench-devinterp2.txt))

bench-venvs: $(BENCH_STAMPS)

bench: bench-venvs
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV) $(BENCH_VENVS)
