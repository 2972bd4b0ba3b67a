#!/usr/bin/env bash
# The whole GPU check in one call, on a GPU machine where onnxruntime-gpu is importable (TensorRT too, if
# the machine has it): builds engines where TensorRT exists, checks GPU vs CPU FP32 parity (stream and one-shot)
# and the FP16 vocoder's quality gate on the GPU, and prints the table (RTF, first audio, peak GPU memory for
# 50, 150, 1,000 and 10,000 characters: CUDA EP FP32/FP16, TensorRT, the torch rebuild run as ModelScope does),
# then the streams-per-GPU rows (N concurrent streams of one voice, N doubling while every stream keeps RTF <= 0.1
# and first audio < 300 ms; STREAMS_TIME seconds at most, STREAMS_MAX=0 leaves them out).
#
#   On a lent machine without network (README "GPU"): pieces from ../shared/gpu/ort_gpu_parts.sh and
#   scripts/gpu_pack.sh in /tmp/gw, then:   . .gpu_wheels/ort_gpu_install.sh && bash scripts/gpu_run.sh
#   Anywhere with onnxruntime-gpu installed and `make demo` done:   bash scripts/gpu_run.sh
#
# A failing GPU test (or engine build) does not stop the run: it is recorded, the later steps still print
# their diagnostics, and the script exits non-zero at the end naming what failed. GPU_TESTS=0 leaves the
# tests out on purpose (a machine without pytest and the test dependencies); the run says so.
set -euo pipefail
cd "$(dirname "$0")/.."
failed=()
step() {  # step NAME CMD...: run CMD; on failure record NAME and go on
  local name=$1
  shift
  "$@" || { local rc=$?; echo "FAILED (exit $rc): $name" >&2; failed+=("$name"); }
}
PY=${PY:-python3}
CHARS=${CHARS:-50 150 1000 10000}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BUNDLE=${BUNDLE:-demo_out/bundle}
MODEL=${MODEL:-demo_out/model}
if [ -f /tmp/gw/bundle.part00 ]; then   # carried pieces (scripts/gpu_pack.sh)
  mkdir -p /tmp/gpu_demo && cat /tmp/gw/bundle.part* > /tmp/gw/bundle.tgz
  (cd /tmp/gw && sha256sum -c "$OLDPWD/.gpu_wheels/bundle.sha256") || { echo "bundle pieces damaged: move them again" >&2; exit 1; }
  tar -C /tmp/gpu_demo -xzf /tmp/gw/bundle.tgz || exit 1
  BUNDLE=/tmp/gpu_demo/bundle MODEL=/tmp/gpu_demo/model
fi
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv || true
$PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
$PY -c "import tensorrt as t; print('TensorRT', t.__version__)" 2>/dev/null \
  || echo "TensorRT: not installed here (its rows print why; CPU CI type-checks that path against tensorrt-stubs)"
# The torch baseline's checkpoints: the demo voice is seeded, so this rebuilds the same weights in seconds.
[ -f "$MODEL/voices/voices.json" ] || $PY -c "from pathlib import Path; from sambert_deploy.export.demo_voice import make_demo_model; make_demo_model(Path('$MODEL'))"
if [ "${GPU_TESTS:-1}" = 0 ]; then
  echo "GPU tests: left out (GPU_TESTS=0)"
elif ! $PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  # The gpu tests would all skip: on the machine this script is for, that is a failure, not a pass.
  echo "onnxruntime has no CUDAExecutionProvider here: the GPU tests cannot run" >&2
  failed+=("GPU tests (no CUDAExecutionProvider)")
elif ! $PY -c "import pytest, hypothesis" 2>/dev/null; then
  echo "pytest/hypothesis are not importable: the GPU tests cannot run (GPU_TESTS=0 to leave them out)" >&2
  failed+=("GPU tests (pytest not installed)")
else
  step "GPU tests (pytest -m 'gpu or trt')" \
    "$PY" -m pytest -q -p no:cacheprovider -m "gpu or trt" tests/test_gpu.py tests/test_tensorrt.py
fi
if $PY -c "from sambert_deploy.runtime.backends import tensorrt_missing as m; import sys; sys.exit(m() is not None)"; then
  step "TensorRT engine build (fp16)" "$PY" -m sambert_deploy.cli engines "$BUNDLE" --voice demo_emo --precision fp16
  step "TensorRT engine build (fp32)" "$PY" -m sambert_deploy.cli engines "$BUNDLE" --voice demo_emo --precision fp32
fi
if info=$($PY -m sambert_deploy.cli info "$BUNDLE"); then
  grep -E "TensorRT|backend|here, auto" <<<"$info" || true   # a display filter: no match is no error
else
  printf '%s\n' "$info"
  echo "FAILED: sambert-deploy info" >&2
  failed+=("sambert-deploy info")
fi
step "vocoder windows batched on the CUDA EP (scripts/bench_vocoder_batch.py)" \
  "$PY" scripts/bench_vocoder_batch.py --bundle "$BUNDLE" --voice demo_emo --backends onnxruntime-cuda \
  --chunk 512 --batches 1 2 4 8 --repeat 5
# shellcheck disable=SC2086
step "GPU benchmark (scripts/gpu_bench.py)" \
  "$PY" scripts/gpu_bench.py --bundle "$BUNDLE" --model-dir "$MODEL" --voice demo_emo --chars $CHARS --timeout "${BENCH_TIMEOUT:-900}" \
  --streams-max "${STREAMS_MAX:-256}" --streams-time "${STREAMS_TIME:-240}"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'gpu_run: %d step(s) failed:\n' "${#failed[@]}" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "gpu_run: every step passed"
