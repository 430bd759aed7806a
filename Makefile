# netblock: the two commands an operator needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
CONFIG ?= config/netblock.yaml

.PHONY: run test lint bench fuzz system-deps venv clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(PIP) install -q -e '.[test,dev]'
	touch $@

$(VENV)/.bench: pyproject.toml $(VENV)/.test
	$(PIP) install -q -e '.[test,dev,bench]'
	touch $@

venv: $(VENV)/.runtime

run: $(VENV)/.runtime
	$(VENV)/bin/netblock serve -c $(CONFIG)

# Debian packages the integration tests drive for real (unbound, dig, promtool, ...).
# Listed one a line in tests/apt-packages.txt; only missing ones are installed.
system-deps:
	@missing=$$(grep -v '^#' tests/apt-packages.txt | grep -v '^$$' | while read -r p; do \
	    dpkg -s "$$p" >/dev/null 2>&1 || echo "$$p"; done); \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" != 0 ]; then echo "need root to install: $$missing" >&2; exit 1; fi; \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: system-deps $(VENV)/.test
	$(PY) -m pytest -q tests

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: system-deps $(VENV)/.bench
	$(PY) bench/run.py

fuzz: $(VENV)/.test
	$(PY) tests/fuzz/run.py --seconds $${FUZZ_SECONDS:-60}

clean:
	rm -rf $(VENV) build dist src/*.egg-info
