#!/usr/bin/env bash
# The whole GPU run, in one call (e.g. on a lent device machine): GPU-marked tests, then the benchmark
# with CUDA EP and torch-on-CUDA beside the CPU rows. Needs onnxruntime-gpu for the CUDA EP rows.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
nvidia-smi || true
$PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
$PY -m pytest -q -m gpu tests/test_gpu.py
[ -f demo_out/bundle/manifest.json ] || $PY scripts/demo.py --out demo_out
$PY scripts/benchmark.py --gpu --sizes 100 300 1000 3000
