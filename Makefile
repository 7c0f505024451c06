# Two commands set everything up: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= out/demo

.PHONY: install demo test test-all lint clean bench bench-scale bench-read-memory bench-ceiling

install: $(STAMP)

# CPU torch is pinned here, not in pyproject.toml, so GPU users keep their CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[s3,demo,test,eval,onnx,openvino]'
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m jobs.embed samples/corpus $(DEMO_OUT) all-miniLM-l6
	@echo "Output written to $(abspath $(DEMO_OUT)) (Parquet per collection, manifest in _manifest.json)"

# Two test processes, each test module kept whole in one (its tests share the module's Ray
# head), the longest modules first (tests/conftest.py) rather than pytest-xdist's order (most
# tests first), so that neither process ends waiting on the other's last long module.
PYTEST_PARALLEL := -n 2 --dist loadfile --no-loadscope-reorder

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-all: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not gpu"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) out .pytest_cache

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.throughput

# The same rows in files of every size, 100,000 one-row files (about 15 minutes), then the
# driver's peak memory and the planning cost at 2M and 20M rows (about 10 minutes more).
bench-scale: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.scale

# One read task's peak memory on a 1 GB JSON Lines file (about 2 minutes, 1 GB in /tmp).
bench-read-memory: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.read_memory

# How fast the CPU side feeds one replica whose model costs nothing (run as a GPU replica
# would, then with the CPU defaults), against one core's tokenizer (200,000 rows, about 3
# minutes on 2 CPUs).
bench-ceiling: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.ceiling
