# Set-up and everyday commands. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUF := protos/node_modules/.bin/buf

.PHONY: install demo up test lint protos bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(BUF): protos/package.json protos/package-lock.json
	npm install --prefix protos --no-audit --no-fund --no-save --loglevel=error
	touch $@

## Run the whole pipeline (explore, promote, upscale, check in) on a fresh local suite.
demo: install
	$(BIN)/tiergen demo --out out/demo

## Start the four services on loopback until Ctrl-C.
up: install
	$(BIN)/tiergen up --data-dir data

## Lint, type-check and run every test (two processes, each test file whole in one).
test: install $(BUF)
	$(BIN)/ruff check .
	$(BIN)/mypy services bench protos/generate.py
	$(BIN)/pytest -n 2 --dist loadfile

lint: install $(BUF)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd protos && ../$(BUF) lint

## Regenerate the Python bindings after editing a .proto file.
protos: install
	$(BIN)/python protos/generate.py
