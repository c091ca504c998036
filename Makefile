# The two commands: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-engines lint bench fidelity clean llama-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/surgecast pipeline scenarios/chatbot.yaml

# llama.cpp's server (built once from the llama-cpp-python sdist, several minutes on 2 cores; cached under
# $$SURGECAST_CACHE or ~/.cache/surgecast) and its tiny random-weight model, for the real-engine tests.
llama-server: $(STAMP)
	$(BIN)/surgecast target llama-server --build --no-start

test: $(STAMP) llama-server
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/simulator_speed.py

# Tests that load a compute-bound real engine for minutes (deselected from `make test`: on a
# shared 2-core machine their capacity swings with other work).
test-engines: $(STAMP) llama-server
	$(BIN)/python -m pytest -q -m engine_load

# Forecast fidelity against a real llama-server (about 10 minutes on 2 cores).
fidelity: $(STAMP) llama-server
	$(BIN)/python benchmarks/fidelity.py --engine llama-server --slots 8,1

clean:
	rm -rf $(VENV) build *.egg-info
