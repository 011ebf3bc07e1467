VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2

.PHONY: venv install dev test test-fast lint demo app clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

venv: $(PY)

install: $(PY)
	$(PY) -m pip install -e .

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

lint: dev
	$(VENV)/bin/ruff check src scripts tests app.py
	$(VENV)/bin/ruff format --check src scripts tests app.py

demo: install
	$(PY) scripts/demo.py

APP_PORT ?= 7860

app: $(PY)
	$(PY) -m pip install -q -e ".[app,onnx]"
	@echo "METRIS app: open http://127.0.0.1:$(APP_PORT)/ (Ctrl+C stops it)"
	$(PY) -m metris_hf.app --host 127.0.0.1 --port $(APP_PORT)

clean:
	rm -rf $(VENV) outputs build *.egg-info
