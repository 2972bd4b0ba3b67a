"""Benchmark (issue 20, part 2): do vocoder windows of one voice run faster as one batched call?

The vocoder graph has a batch axis (bundles exported before it get one in a copy, in a temporary folder,
never in the bundle). Per backend (ONNX Runtime CPU, OpenVINO CPU, and the CUDA EP where onnxruntime-gpu
and a GPU are present) this times B windows of the runtime's regular window (``--chunk`` plus context)
as B single calls and as one call of batch B, interleaved, median of ``--repeat``, and checks that each
row of the batched output equals its single call. CPU intra-op threads: 1 (the runtime runs windows of
several streams side by side, one thread each, on CPUs).

    python scripts/bench_vocoder_batch.py [--bundle demo_out/bundle] [--voice demo_emo] [--batches 1 2 4]
        [--chunk 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sambert_deploy.runtime.manifest import read_manifest  # noqa: E402
from sambert_deploy.runtime.placement import StreamOptions  # noqa: E402
from sambert_deploy.runtime.synthesizer import window_frames  # noqa: E402

Run = Callable[[np.ndarray], np.ndarray]


def batched_copy(src: Path, out: Path) -> None:
    import onnx

    m = onnx.load(str(src))
    for vi in list(m.graph.input) + list(m.graph.output):
        d = vi.type.tensor_type.shape.dim[0]
        d.ClearField("dim_value")
        d.dim_param = "batch"
    del m.graph.value_info[:]  # inferred shapes of intermediates pin batch 1
    onnx.save(m, str(out))


def ort_runner(path: Path) -> Run:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def cuda_runner(path: Path) -> Run | None:
    """ONNX Runtime's CUDA EP, as the runtime opens it (heuristic convolution search); None without it."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    s = ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
                                                   "CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in s.get_providers():
        return None
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def openvino_runner(path: Path) -> Run | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    return lambda x: req.infer({0: x})[0]


RUNNERS: dict[str, Callable[[Path], Run | None]] = {
    "onnxruntime-cpu": ort_runner, "openvino-cpu": openvino_runner, "onnxruntime-cuda": cuda_runner}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("demo_out/bundle"))
    ap.add_argument("--voice", default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--backends", nargs="+", choices=list(RUNNERS), default=list(RUNNERS))
    ap.add_argument("--chunk", type=int, default=StreamOptions().vocoder_chunk,
                    help="vocoder chunk whose window is timed (the GPU tiers use 128-512)")
    a = ap.parse_args()
    manifest = read_manifest(a.bundle)
    vm = manifest.voice(a.voice)
    frames = window_frames(vm, StreamOptions(vocoder_chunk=a.chunk))
    src = manifest.graph_path(vm, "vocoder")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocoder_batched.onnx"
        batched_copy(src, path)
        runners = {name: RUNNERS[name](path) for name in a.backends}
        print(f"voice {vm.name}, window {frames} frames, 1 intra-op thread, median of {a.repeat}")
        print(f"{'backend':16} {'B':>2} {'B single calls ms':>18} {'one batched call ms':>20} {'speed-up':>9} "
              f"{'max |diff|':>11}")
        for b in a.batches:
            xs = [rng.standard_normal((1, vm.acoustic.num_mels, frames)).astype(np.float32) for _ in range(b)]
            xb = np.concatenate(xs, 0)
            for name, run in runners.items():
                if run is None:
                    print(f"{name:16} {b:>2} (not installed)")
                    continue
                ys, yb = [run(x) for x in xs], run(xb)  # also the warm-up
                diff = max(float(np.abs(yb[i] - ys[i][0]).max()) for i in range(b))
                single, batched = [], []
                for _ in range(a.repeat):
                    t = time.perf_counter()
                    for x in xs:
                        run(x)
                    single.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    run(xb)
                    batched.append(time.perf_counter() - t)
                ms, mb = statistics.median(single) * 1e3, statistics.median(batched) * 1e3
                print(f"{name:16} {b:>2} {ms:>18.1f} {mb:>20.1f} {ms / mb:>8.2f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()
