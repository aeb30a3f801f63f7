# Every target sets itself up: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install demo test test-fast dev bench report clean cluster-up cluster-down gpu-kit

install: $(STAMP)

# torch==2.13.0 resolves to the CPU wheel on pip's find-links where one is offered (this
# project's machines); a GPU host gets the CUDA build of the same version from PyPI.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	mkdir -p data/uploads
	find resources/demo_media -type f ! -name '*.json' -exec cp -n {} data/uploads/ \;
	$(BIN)/opentr run
	@echo
	$(BIN)/opentr report

test: install
	bash scripts/test.sh

# A private Redis and one resident worker per device beside the UI, so every run shares one
# loaded model (OPENTR_BROKER_URL= with nothing after it keeps the model in each run process).
# make dev PORT=3001, or ARGS='-h 0.0.0.0 -p 3001' (any dagster dev option)
dev: install
	OPENTR_BROKER_URL=$${OPENTR_BROKER_URL-embedded} $(BIN)/opentr dev $(if $(PORT),-p $(PORT)) $(ARGS)

# The production shape on one machine, loopback only: Redis, PostgreSQL, two resident workers
# (cpu:0 and cpu:1 standing for two GPUs), the Dagster daemon and UI. `cluster-down` stops it all.
cluster-up: install
	$(BIN)/python scripts/cluster.py up

cluster-down:
	$(BIN)/python scripts/cluster.py down

bench: install
	$(BIN)/opentr bench

# Everything a bare GPU host lacks, in parts of one transfer each, and the device calls that run
# the GPU proof there (README, "The GPU proof, ready before a GPU host is").
gpu-kit: install
	$(BIN)/python benchmarks/gpu_kit.py

report: install
	$(BIN)/opentr report

clean:
	rm -rf data .dagster_home .test-artifacts bench-results .cluster gpu-kit
