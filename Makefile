# Two commands after cloning: `make build` and `make test`. Both create .venv if missing and install the
# pinned set (pyproject.toml); nothing is downloaded but packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: build test check list clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned, so pip takes the local CPU wheel and never resolves a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

build: $(STAMP)
	$(PY) -m export build --config pipeline.yaml

test: $(STAMP)
	$(PY) -m pytest -q

check: $(STAMP)
	$(PY) -m export check --config pipeline.yaml --report build/check.md --json build/check.json

list: $(STAMP)
	$(PY) -m export list

clean:
	rm -rf build
