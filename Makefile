# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Label Studio pins many packages, so the end-to-end tests run it from its own virtual environment.
LS_VENV ?= .venv-ls
LS_VERSION ?= 1.23.2
LS_STAMP := $(LS_VENV)/.installed-$(LS_VERSION)

.PHONY: install install-ls run test test-fast lint clean

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $(STAMP)

install: $(STAMP)

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LS_VENV)/bin/python -m pip install --quiet label-studio==$(LS_VERSION)
	touch $(LS_STAMP)

install-ls: $(LS_STAMP)

run: install
	$(PY) -m ovaal_backend serve

lint: install
	$(VENV)/bin/ruff check ovaal_backend tests benchmarks

test: install install-ls lint
	OVAAL_LS_BIN=$(abspath $(LS_VENV))/bin/label-studio $(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not e2e"

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache
