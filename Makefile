# Entry points: `make run` (gateway), `make demo` (the trial, its own data folder), `make test` (whole suite).
# Each builds .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP_RUN  := $(VENV)/.installed-run
STAMP_DEV  := $(VENV)/.installed-dev

.PHONY: run demo test lint venv mosquitto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP_RUN)

venv: $(STAMP_DEV)

run: $(STAMP_RUN)
	$(BIN)/parcelbox run

# The five-minute trial: defaults, its own data folder (see `parcelbox run --demo`), never a real install's.
demo: $(STAMP_RUN)
	$(BIN)/parcelbox run --demo

mosquitto:
	@sh tools/ensure_packages.sh mosquitto

lint: $(STAMP_DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy  # gateway/ and tools/, configured in pyproject.toml [tool.mypy]

# The suite mostly waits (brokers, child processes, the browser), so it runs on parallel workers
# (pytest-xdist; every fixture takes its own ports and folders). PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 3
test: $(STAMP_DEV) lint
	@sh tools/ensure_packages.sh mosquitto chromium libmagic1
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
