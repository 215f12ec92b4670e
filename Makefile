# Two commands on a fresh machine: `make demo` and `make test`.
# Both (re)build .venv from the pinned requirements when it is missing or stale:
# the stamp file is named after a hash of requirements.txt and pyproject.toml.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.stamp-$(REQ_HASH)
# Some machines cap torch/torchvision with a global pip constraint file; the pins
# in requirements.txt are the constraint here.
export PIP_CONSTRAINT := /dev/null
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-fast bench clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
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

bench: $(STAMP)
	$(PY) -m pip install -q -c requirements.txt -r bench/requirements-bench.txt
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
