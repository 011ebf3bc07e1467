VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2

.PHONY: venv install dev test lint demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

venv: $(PY)

install: $(PY)
	$(PY) -m pip install -e .

dev: $(PY)
	$(PY) -m pip install -e ".[dev]"

test: dev
	$(VENV)/bin/ruff check src scripts tests
	$(PY) -m pytest $(PYTEST_ARGS)

lint: dev
	$(VENV)/bin/ruff check src scripts tests

demo: install
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) outputs build *.egg-info
