# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Label Studio pins many packages, so the end-to-end tests run it from its own virtual environment.
LS_VENV ?= .venv-ls
LS_VERSION ?= 1.23.2
LS_STAMP := $(LS_VENV)/.installed-$(LS_VERSION)

# The dashboard's browser test (tests/test_dashboard_browser.py) renders the page in Debian's headless Chromium; it is
# installed with apt-get where missing and possible, and the test skips itself without it.
CHROMIUM ?= /usr/bin/chromium

.PHONY: install install-ls install-chromium run test test-fast lint clean

$(STAMP): requirements.txt requirements-test.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

$(LS_STAMP): constraints-ls.txt
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LS_VENV)/bin/python -m pip install --quiet label-studio==$(LS_VERSION) -c constraints-ls.txt
	touch $(LS_STAMP)

install-ls: $(LS_STAMP)

install-chromium:
	@if [ -x "$(CHROMIUM)" ] || command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "no apt-get here: chromium not installed, the dashboard's browser test will skip"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
		echo "not root and no sudo: chromium not installed, the dashboard's browser test will skip"; exit 0; fi; \
	$$SUDO apt-get install -y chromium || { $$SUDO apt-get update && $$SUDO apt-get install -y chromium; } || \
		echo "apt-get could not install chromium: the dashboard's browser test will skip"

run: install
	$(PY) -m ovaal_backend serve

lint: install
	$(VENV)/bin/ruff check ovaal_backend tests benchmarks

test: install install-ls install-chromium lint
	OVAAL_LS_BIN=$(abspath $(LS_VENV))/bin/label-studio $(PY) -m pytest

# Everything but Label Studio and the slow tests (full simulations, queue workers, backend processes, browsers).
test-fast: install
	$(PY) -m pytest -m "not e2e and not slow"

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache
