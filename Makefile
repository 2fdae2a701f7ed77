# bids_phydiff: `make test` and `make demo` work on a fresh clone (they install what they need).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test demo bench clean help

help:
	@echo "make install  create $(VENV) and install bids_phydiff with pinned dependencies"
	@echo "make test     install, then run the test suite"
	@echo "make demo     install, then run the main job end to end on a generated phantom dataset"
	@echo "make bench    install, then run the benchmarks (writes benchmarks/results/*.json)"

install: $(STAMP)

# torch first, from the pinned CPU wheel; then every other package at its locked version; then
# the package itself; natten last, built against that torch (optional: the torch backend needs no natten).
$(STAMP): setup.cfg pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation natten==0.21.7 \
		|| echo "WARNING: natten (optional) did not install; the torch attention backend will be used"
	$(PY) -m pip check
	touch $@

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m bids_phydiff.cli.demo $(DEMO_DIR) $(DEMO_ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
