# Every target sets up .venv on first use (python3 -m venv + pip), so a fresh machine
# with Python 3.11, make and the package registries is enough.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
ARGS   ?=
# pytest-xdist is not used: 2 cores, and the suite is dominated by a few torch cases.
PYTEST_ARGS ?=

.PHONY: help setup test lint typecheck pytest demo bench clean

help:
	@echo "make demo    - train every head on digits and textures, compress, write demo_out/ (ARGS=--quick: 1 min)"
	@echo "make test    - ruff, mypy and pytest (derandomised hypothesis profile)"
	@echo "make bench   - benchmarks/run.py \$$ARGS (--smoke for a quick check); writes benchmarks/results/"

$(VENV)/.core: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[torch]'
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) -e '.[torch,test]'
	touch $@

$(VENV)/.demo: $(VENV)/.core
	$(PIP) -e '.[torch,demo]'
	touch $@

$(VENV)/.bench: $(VENV)/.test benchmarks/requirements.txt
	$(PIP) -r benchmarks/requirements.txt
	touch $@

setup: $(VENV)/.test

demo: $(VENV)/.demo
	$(PY) -m lowrank_pool.demo $(ARGS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check lowrank_pool tests benchmarks
	$(VENV)/bin/ruff format --check lowrank_pool tests benchmarks

typecheck: $(VENV)/.test
	$(VENV)/bin/mypy

pytest: $(VENV)/.test
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(VENV)/.bench
	$(PY) benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
