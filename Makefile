# Two commands after cloning: `make build` and `make test`. Both create .venv if missing and install the
# pinned set (pyproject.toml); nothing is downloaded but packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: build test check bench list run clean triton

# A Triton Inference Server for the tests and the load benchmark: the tritonserver build (CPU, Python backend)
# that the nvidia-pytriton wheel ships. It pins numpy < 2, so it gets its own venv; onnxruntime at the
# project's version, for the Python-backend models that run this project's engines.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
ORT_VERSION := $(shell sed -n 's/.*"onnxruntime==\([0-9.]*\)".*/\1/p' pyproject.toml)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned, so pip takes the local CPU wheel and never resolves a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(TRITON_STAMP): pyproject.toml
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet nvidia-pytriton==0.7.0 onnxruntime==$(ORT_VERSION)
	touch $(TRITON_STAMP)

triton: $(TRITON_STAMP)

# The labelled evaluation set pipeline.yaml's accuracy.data names (synthetic scenes, never used in training).
VAL := build/synthetic_val/classes.txt
$(VAL): | $(STAMP)
	$(PY) -m data --out build/synthetic_val --count 20

build: $(STAMP) $(VAL)
	$(PY) -m export build --config pipeline.yaml

# --max-worker-restart 0: a worker that crashes (a segfault in a native library) ends the run with that test
# failed; restarting it under --dist loadgroup hangs pytest-xdist 3.8 until CI's time runs out.
test: $(STAMP) $(TRITON_STAMP)
	$(PY) -m pytest -q -n auto --dist loadgroup --max-worker-restart 0

check: $(STAMP) $(VAL)
	$(PY) -m export check --config pipeline.yaml --data build/synthetic_val --report build/check.md --json build/check.json

# Peers side by side (benchmarks/peers.py): PyTorch eager, torch.compile, OpenVINO on the built graphs and every
# engine built, same input and thread count, one run. The default build first, then the opt-in OpenVINO engines
# (its units that miss parity or the accuracy budget are refused, not built). OpenVINO comes with the test extra
# (through the bench one). THREADS=2 matches the machine the README's table was measured on.
THREADS ?= 2
ITERATIONS ?= 20
bench: build
	$(PY) -m export build --config pipeline.yaml --backends openvino
	$(PY) benchmarks/peers.py --config pipeline.yaml --threads $(THREADS) --iterations $(ITERATIONS) \
		--markdown build/peers.md --json build/peers.json

# Live segmentation: `make run SOURCE=0` (USB camera), SOURCE=csi://0 (Jetson), rtsp://..., a file, synthetic://.
# Watch it at http://127.0.0.1:8080 (OUTPUT=display:// for a window, OUTPUT=out.mp4 for a file).
SOURCE ?= synthetic://
ENGINE ?= bisenetv2
OUTPUT ?= http://127.0.0.1:8080
run: build
	$(PY) -m runtime --engine $(ENGINE) --source '$(SOURCE)' --output '$(OUTPUT)'

list: $(STAMP)
	$(PY) -m export list

clean:
	rm -rf build
