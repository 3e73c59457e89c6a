# Two commands on a fresh machine (Python 3.11 + package registries):
#   make serve   set up, build the models, run the gateway on configs/quickstart.yaml
#   make test    set up, build the models, lint, run the test suite
# DEVICE=gpu installs onnxruntime-gpu *instead of* onnxruntime (never both).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
DEVICE ?= cpu
CONFIG ?= configs/quickstart.yaml
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(DEVICE)

.PHONY: setup models serve test lint bench bench-recovery bench-slo bench-grpc bench-pools bench-diurnal simulate loadtest triton triton-env clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The two ONNX Runtime builds write the same package folder: remove both, install one.
	$(BIN)/python -m pip uninstall --quiet --yes onnxruntime onnxruntime-gpu
	$(BIN)/python -m pip install --quiet -e '.[$(DEVICE),build,test,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

models: $(STAMP)
	PYTHONHASHSEED=0 $(BIN)/python models/build.py

serve: models
	$(BIN)/serving run $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check serving tests models loadtests

test: models lint triton-env
	$(BIN)/pytest

bench-recovery: models
	$(BIN)/python loadtests/bench_recovery.py

bench: models
	$(BIN)/python loadtests/bench_ingress.py

bench-slo: models triton-env
	$(BIN)/python loadtests/bench_slo.py

bench-grpc: models triton-env
	$(BIN)/python loadtests/bench_grpc.py

bench-pools: models
	$(BIN)/python loadtests/bench_pools.py

# A day compressed into 4 minutes on cloud-only / on-prem-static / hybrid (~15 min), with
# the simulator beside each; and a simulated day of a ~1,000-replica fleet (~20 s).
bench-diurnal: models
	$(BIN)/python loadtests/bench_diurnal.py

simulate: setup
	$(BIN)/python loadtests/simulate.py

# Locust, open loop, against configs/hybrid.yaml (CONFIG=... on the command line for another):
#   make loadtest SHAPE=diurnal DURATION=240 [PEAK=100]   -> loadtests/results/locust-<shape>/
loadtest: models
	$(BIN)/python loadtests/run_locust.py --shape $(or $(SHAPE),step) --duration $(or $(DURATION),90) \
		$(if $(PEAK),--peak-rps $(PEAK)) $(if $(filter command line,$(origin CONFIG)),--config $(CONFIG))

# A local Triton server for configs/triton.yaml (gRPC 127.0.0.1:8101; Ctrl-C stops it).
triton: models triton-env
	$(BIN)/python -m serving.tritonserver --models digits minilm

# A real Triton server (the binary in the nvidia-pytriton wheel) needs its own venv: the
# wheel pins numpy<2. serving/tritonserver.py starts it.
TRITON_VENV ?= .venv-triton
triton-env: $(TRITON_VENV)/.installed

$(TRITON_VENV)/.installed:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet 'nvidia-pytriton==0.7.0' 'onnxruntime>=1.20,<2'
	touch $@

clean:
	rm -rf $(VENV) $(TRITON_VENV) models/*/[0-9]*/ models/minilm/tokenizer
