# Every target sets up .venv on first use (python3 -m venv + pip), so a fresh machine
# with Python 3.11, make and the package registries is enough.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
ARGS   ?=
# pytest-xdist is not used: 2 cores, and the suite is dominated by a few torch cases.
PYTEST_ARGS ?=

.PHONY: help setup test lint typecheck pytest demo bench dist integration docs docs-check clean

help:
	@echo "make demo    - train every head on digits and textures, compress, write demo_out/ (ARGS=--quick: 1 min)"
	@echo "make test    - ruff, import-linter, mypy and pytest (derandomised hypothesis profile)"
	@echo "make integration - torchvision resnet18 and timm in their own venv (5.5 GB, torch 2.14.1)"
	@echo "make dist    - build wheel + sdist, install each in a fresh venv and smoke-test it"
	@echo "make docs    - build the documentation site into docs/_build/html (examples executed)"
	@echo "make docs-check - open the built site in headless Chromium: math, images, no outside requests"
	@echo "make bench   - benchmarks/run.py, fits.py and init_scale.py \$$ARGS (--smoke for a quick check); writes benchmarks/results/"

$(VENV)/.core: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[torch]'
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) -e '.[torch,test]'
	# the optional compiled CPU kernel, for every capability (the tests run each this CPU supports); the torch
	# path runs without it
	$(PY) -m lowrank_pool build-kernel --capability all --quiet
	touch $@

$(VENV)/.demo: $(VENV)/.core
	$(PIP) -e '.[torch,demo]'
	touch $@

$(VENV)/.docs: $(VENV)/.core
	$(PIP) -e '.[torch,docs]'
	touch $@

$(VENV)/.bench: $(VENV)/.test benchmarks/requirements.txt
	$(PIP) -r benchmarks/requirements.txt
	touch $@

setup: $(VENV)/.test

demo: $(VENV)/.demo
	$(PY) -m lowrank_pool.demo $(ARGS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check lowrank_pool tests benchmarks docs
	$(VENV)/bin/ruff format --check lowrank_pool tests benchmarks
	$(VENV)/bin/lint-imports --no-logo   # the layering contracts of pyproject.toml

typecheck: $(VENV)/.test
	$(VENV)/bin/mypy

pytest: $(VENV)/.test
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(VENV)/.bench
	$(PY) benchmarks/run.py $(ARGS)
	$(PY) benchmarks/fits.py $(ARGS)
	$(PY) benchmarks/init_scale.py $(filter --smoke,$(ARGS))
	$(PY) benchmarks/family.py $(filter --smoke,$(ARGS))

# The documentation site: docs/_build/html. -W: any warning fails the build; the gallery's examples
# run during the build (sphinx-gallery), so a broken example fails it too.
docs: $(VENV)/.docs
	rm -rf docs/_build docs/auto_tutorial docs/auto_gallery
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "site: docs/_build/html/index.html"

# Open the built pages in headless Chromium (Debian's package; installed here when missing and
# possible): math rendered, images loaded, no request to an outside host; screenshots in
# docs/_build/screenshots.
docs-check: $(VENV)/.docs
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  export DEBIAN_FRONTEND=noninteractive && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)))
	$(PY) -m pytest -q -p no:cacheprovider docs/check_site.py

# Build the wheel and sdist and install each into a fresh venv (no checkout on the path). The wheel goes in as
# the README says (torch first, pinned to the CPU wheel, then the [torch] extra); its public kernel commands
# run, then the Python blocks of README.md and docs/index.md. The sdist goes in without torch: the functional
# API, and `import lowrank_pool.nn` names the extra.
dist: $(VENV)/.test
	$(PIP) build
	rm -rf dist build/dist-check
	$(PY) -m build --outdir dist . > build-dist.log 2>&1 || (cat build-dist.log; exit 1)
	rm -f build-dist.log
	$(PYTHON) -m venv build/dist-check/whl
	build/dist-check/whl/bin/pip install --disable-pip-version-check -q -c constraints.txt torch
	build/dist-check/whl/bin/pip install --disable-pip-version-check -q -c constraints.txt "$$(ls dist/*.whl)[torch]"
	cd build/dist-check && whl/bin/python $(CURDIR)/.ci/dist_smoke.py
	cd build/dist-check && whl/bin/python -m lowrank_pool build-kernel && whl/bin/python -m lowrank_pool kernel-status
	cd build/dist-check && whl/bin/python $(CURDIR)/.ci/run_markdown.py $(CURDIR)/README.md $(CURDIR)/docs/index.md
	$(PYTHON) -m venv build/dist-check/sdist
	build/dist-check/sdist/bin/pip install --disable-pip-version-check -q dist/*.tar.gz
	cd build/dist-check && sdist/bin/python $(CURDIR)/.ci/dist_smoke.py

# torchvision and timm do not import beside the pinned CPU torch 2.13; they do beside torch 2.14.1 +
# torchvision 0.29.1 (a 5.5 GB CUDA build that pip takes from these machines' disk in about a minute).
# Not part of `make test`/CI: the size is a risk on a small CI disk, and the main suite already covers
# both conventions (avgpool/fc, forward_features) on stand-in modules and Hugging Face models.
INTEG := .venv-integration
$(INTEG)/.ok: pyproject.toml
	$(PYTHON) -m venv $(INTEG)
	$(INTEG)/bin/pip install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1 timm
	$(INTEG)/bin/pip install --disable-pip-version-check -q -e '.[torch]' pytest hypothesis transformers
	touch $@

integration: $(INTEG)/.ok
	$(INTEG)/bin/python -m pytest -q tests/test_nn_zoo.py

clean:
	rm -rf $(VENV) $(INTEG) dist build docs/_build docs/auto_tutorial docs/auto_gallery .pytest_cache .mypy_cache .ruff_cache .hypothesis
