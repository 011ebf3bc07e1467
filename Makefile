VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2

.PHONY: venv install dev test test-fast test-lowest lint demo app clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

venv: $(PY)

install: $(PY)
	$(PY) -m pip install -e .

# `make demo` installs once, then again only when pyproject.toml changes (the install is editable: code edits
# need no reinstall).
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -e .
	touch $@

dev: $(PY)
	$(PY) -m pip install -e ".[dev]"

test: dev
	$(VENV)/bin/ruff check src scripts tests app.py
	$(VENV)/bin/ruff format --check src scripts tests app.py
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: dev
	$(VENV)/bin/ruff check src scripts tests app.py
	$(VENV)/bin/ruff format --check src scripts tests app.py
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

# The same package against the oldest releases pyproject.toml allows (.ci/constraints-lowest.txt), in its own venv:
# the fast tests plus the ONNX export, whose exporter is the dependency most likely to move under us.
LOWEST_VENV ?= .venv-lowest

$(LOWEST_VENV)/bin/python:
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install -c .ci/constraints-lowest.txt -e ".[dev]"

test-lowest: $(LOWEST_VENV)/bin/python
	$(LOWEST_VENV)/bin/python -m pytest $(PYTEST_ARGS) -m "not slow"
	$(LOWEST_VENV)/bin/python -m pytest $(PYTEST_ARGS) tests/test_onnx.py

lint: dev
	$(VENV)/bin/ruff check src scripts tests app.py
	$(VENV)/bin/ruff format --check src scripts tests app.py

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

APP_PORT ?= 7860

app: $(PY)
	$(PY) -m pip install -q -e ".[app,onnx]"
	@echo "METRIS app: open http://127.0.0.1:$(APP_PORT)/ (Ctrl+C stops it)"
	$(PY) -m metris_hf.app --host 127.0.0.1 --port $(APP_PORT)

clean:
	rm -rf $(VENV) $(LOWEST_VENV) outputs build *.egg-info
