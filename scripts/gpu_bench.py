"""GPU table: the project's runtime (CUDA EP FP32/FP16, TensorRT where present) against the torch rebuild
run on the GPU the way ModelScope runs it (one sentence at a time, whole utterance, reference decoder
loop keeping every attention map), for inputs of 50, 150, 1,000 and 10,000 characters of Chinese text
as one sentence (no full stop: the worst case, the seed's out-of-memory curve). Then parity: the GPU
stream and one-shot against the CPU's FP32 output (<= 1e-4), and the FP16 vocoder on the GPU through
the precision gate (log-mel L1 and PESQ against FP32, the thresholds of ``sambert-deploy quantize``).

Streams per GPU (issue 20): N concurrent streams of one voice on one Synthesizer (``--streams-config``,
CUDA EP FP32 by default), all started together, N doubling (1, 2, 4, ...) while every stream keeps RTF
<= ``--rtf-limit`` and first audio < ``--first-limit`` s, up to ``--streams-max`` and ``--streams-time``
seconds in all. Per N: the worst stream's RTF and first audio, the mean streams per decoder call
(``Synthesizer.activity()``), the placement's decoder batch and the peak GPU memory; next to it the torch
rebuild, which serves one request after another as ModelScope's pipeline does (its N is derived from
its one-request time, and said so).

Peak GPU memory is the device's used memory (NVML, sampled every 2 ms from this parent process) above
what was used before the measured process started: the CUDA context, libraries and arenas included,
as nvidia-smi shows it. Each measurement runs in a fresh process.

    python scripts/gpu_bench.py [--bundle demo_out/bundle] [--chars 50 150 1000 10000] [--torch-max 1000]
    python scripts/gpu_bench.py --configs cpu-fp32 --chars 50 --torch-max 0 --no-parity   # smoke run, no GPU
    python scripts/gpu_bench.py --chars --no-parity --streams-config cpu-fp32 --rtf-limit 10 --first-limit 30 \
        --streams-max 4 --torch-max 0      # the streams row's code path on the CPU (dry check, no GPU)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

SEED = ("一个开源的语音合成工具把声学模型和声码器从训练检查点导出成小而快的部署版本我们先把文字转换成音素"
        "再逐步生成梅尔频谱最后用声码器一块一块地合成音频，")
CONFIGS: dict[str, dict[str, Any]] = {
    "cuda-fp32": {"backend": "cuda", "precision": "fp32", "strict": True},
    "cuda-fp16": {"backend": "cuda", "precision": "fp16", "strict": True},
    "trt-fp16": {"backend": "tensorrt", "precision": "fp16", "strict": True},
    "trt-fp32": {"backend": "tensorrt", "precision": "fp32", "strict": True},
    "cpu-fp32": {"backend": "cpu", "precision": "fp32", "strict": True},
}
MB = 1 << 20


def text_of(chars: int, start: int = 0) -> str:
    """``chars`` characters of Chinese as one sentence (commas only: no sentence split), from ``start``
    into the seed text (concurrent streams say different things)."""
    start %= len(SEED)
    return (SEED * ((start + chars) // len(SEED) + 1))[start:start + chars]


# -- GPU memory: NVML through ctypes (no context in the sampling process) ------------------------------
class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class GpuSampler:
    """Polls the device's used memory in a thread; ``peak_mb()`` above the value at ``start()``."""

    def __init__(self, index: int = 0):
        self.ok = False
        try:
            self.lib = ctypes.CDLL("libnvidia-ml.so.1")
            self.handle = ctypes.c_void_p()
            self.ok = (self.lib.nvmlInit_v2() == 0 and
                       self.lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(self.handle)) == 0)
        except OSError:
            pass

    def used(self) -> int:
        m = _NvmlMemory()
        if self.lib.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(m)) != 0:
            return 0
        return int(m.used)

    def start(self) -> None:
        if not self.ok:
            return
        self.base = self.peak = self.used()
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.used())
            time.sleep(0.002)

    def peak_mb(self) -> float | None:
        if not self.ok:
            return None
        self.running = False
        self.thread.join()
        return (self.peak - self.base) / MB


# -- children --------------------------------------------------------------------------------------------
def _open(bundle: str, voice: str, kwargs: dict[str, Any]) -> Any:
    """A Synthesizer with ``voice`` loaded, or the one-line error dict of why it could not open."""
    from sambert_deploy.errors import SambertDeployError
    from sambert_deploy.runtime.synthesizer import Synthesizer

    try:
        syn = Synthesizer(bundle, voice=voice, **kwargs)
        syn.load(voice)
    except SambertDeployError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return syn


def run_ours(bundle: str, voice: str, chars: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    syn = _open(bundle, voice, kwargs)
    if isinstance(syn, dict):
        return syn
    with syn:
        syn.synthesize("你好。")  # warm-up outside the timing
        t0 = time.perf_counter()
        first, samples = None, 0
        with syn.stream(text_of(chars)) as s:
            for c in s:
                first = first if first is not None else time.perf_counter() - t0
                samples += len(c.samples)
        total = time.perf_counter() - t0
        (am, voc), = syn.backends().values()
        prec, = syn.precisions().values()
        plan = syn.gpu_plan.describe() if syn.gpu_plan is not None else "no GPU plan"
    audio = samples / syn.sample_rate
    return {"first": first, "total": total, "audio": audio, "rtf": total / audio, "runs": f"{am} + {voc} {prec}",
            "plan": plan}


def run_streams(bundle: str, voice: str, n: int, chars: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``n`` streams of ``voice`` on one Synthesizer, started together; each stream's RTF is its own wall
    time (from its ``stream()`` call, front end included) over its audio."""
    from sambert_deploy.runtime.batching import batched

    syn = _open(bundle, voice, kwargs)
    if isinstance(syn, dict):
        return syn
    with syn:
        # A bundle exported before the batch axis runs one decoder call per stream: said in the row.
        axis = batched(syn.sessions(voice)["decoder_step"])
        _together(n, lambda i: syn.synthesize("你好。"))  # warm-up: sessions, and batch shapes up to n
        before = syn.activity()
        firsts: list[float] = [0.0] * n
        rtfs: list[float] = [0.0] * n

        def one(i: int) -> None:
            t0 = time.perf_counter()
            first, samples = None, 0
            with syn.stream(text_of(chars, 11 * i)) as s:
                for c in s:
                    first = first if first is not None else time.perf_counter() - t0
                    samples += len(c.samples)
            if first is None or not samples:
                raise RuntimeError(f"stream {i} gave no audio")
            firsts[i], rtfs[i] = first, (time.perf_counter() - t0) / (samples / syn.sample_rate)

        errors = _together(n, one)
        after = syn.activity()
        (am, voc), = syn.backends().values()
        prec, = syn.precisions().values()
        batch = syn.placement.decoder_batch
        opened, = syn.opened().values()
    if errors:
        return {"error": f"{len(errors)} of {n} stream(s) failed: {errors[0]}"}
    calls, steps = after.decoder_calls - before.decoder_calls, after.decoder_steps - before.decoder_steps
    vcalls, windows = after.vocoder_calls - before.vocoder_calls, after.vocoder_windows - before.vocoder_windows
    return {"n": n, "rtf": max(rtfs), "first": max(firsts), "mean_batch": steps / calls if calls else None,
            "decoder_batch": batch if axis else "1 (bundle without the batch axis: re-export it)",
            "mean_voc_batch": windows / vcalls if vcalls else 1.0, "vocoder_batch": opened.vocoder_batch,
            "runs": f"{am} + {voc} {prec}"}


def _together(n: int, fn: Any) -> list[str]:
    """``fn(i)`` for i < n in n threads released at once; the errors, as text."""
    go = threading.Barrier(n)
    errors: list[str] = []

    def run(i: int) -> None:
        try:
            go.wait()
            fn(i)
        except BaseException as e:  # noqa: BLE001 - reported in the row
            errors.append(f"{type(e).__name__}: {e}")

    workers = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def run_torch(model_dir: str, voice: str, chars: int, device: str) -> dict[str, Any]:
    import torch

    from sambert_deploy.frontend import FrontEnd, FrontEndOptions
    from sambert_deploy.models.loading import load_hifigan, load_sambert, voice_files
    from sambert_deploy.symbols import encode_symbols, format_units

    vf = voice_files(model_dir, voice)
    am, inv = load_sambert(vf.am_config, vf.am_ckpt)
    gen = load_hifigan(vf.voc_config, vf.voc_ckpt)
    am.to(device)
    gen.to(device)
    units = [u for s in FrontEnd(FrontEndOptions()).units(text_of(chars)) for u in s]
    enc = encode_symbols(format_units(units), inv)
    args = [torch.from_numpy(a)[None].to(device) for a in (enc.ling, enc.emotion, enc.speaker)]
    try:
        with torch.no_grad():
            warm = encode_symbols(format_units([u for s in FrontEnd(FrontEndOptions()).units("你好") for u in s]), inv)
            am(*[torch.from_numpy(a)[None].to(device) for a in (warm.ling, warm.emotion, warm.speaker)])
            if device == "cuda":  # CUDA, cuBLAS and cuDNN start-up outside the timing, as for ours
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = am(*args)
            valid = int(out["LR_length_rounded"][0])
            wav = gen(out["postnet_outputs"][0, :valid].T[None])[0, 0].cpu().numpy()
            if device == "cuda":
                torch.cuda.synchronize()
            total = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError as e:
        return {"error": f"out of GPU memory ({str(e).splitlines()[0][:120]})", "oom": True}
    audio = len(wav) / vf.sample_rate
    return {"first": total, "total": total, "audio": audio, "rtf": total / audio, "runs": f"torch {device} fp32"}


def run_parity(bundle: str, voice: str, backend: str) -> dict[str, Any]:
    """GPU vs CPU FP32: streamed and one-shot audio (max abs difference), and the FP16 vocoder's gate."""
    import numpy as np

    from sambert_deploy.calibration.bundle import judge_audio
    from sambert_deploy.errors import MissingExtraError, SambertDeployError
    from sambert_deploy.gates import describe_verdict
    from sambert_deploy.runtime.pipeline import OneShot
    from sambert_deploy.runtime.synthesizer import Synthesizer

    text = text_of(150)
    out: dict[str, Any] = {}
    with Synthesizer(bundle, voice=voice, backend="cpu", precision="fp32", strict=True) as cpu:
        ref = cpu.synthesize(text)
        symbols = _symbols(cpu, text)
    try:
        with Synthesizer(bundle, voice=voice, backend=backend, precision="fp32", strict=True) as gpu:
            got = gpu.synthesize(text)
        # A duration predicted at x.5 may round the other way on the GPU (seen on the H200: one frame in
        # 150 chars), which changes the length: the stream is then compared as lengths, the one-shot below
        # with the CPU's durations forced (the export gate's rule for a rounding flip).
        out["stream_fp32_maxabs"] = (float(np.abs(got - ref).max()) if got.shape == ref.shape else
                                     f"lengths differ: {len(got)} vs {len(ref)} samples (a rounded duration flipped)")
        one = "cuda" if backend == "tensorrt" else backend  # engines are profiled for stream windows
        with OneShot(bundle, voice, backend="cpu") as a, OneShot(bundle, voice, backend=one) as b:
            diffs = []
            for s in symbols:
                ra = a.run(s)
                diffs.append(float(np.abs(ra.audio - b.run(s, durations=ra.durations).audio).max()))
        out["oneshot_fp32_maxabs"] = max(diffs)
        with Synthesizer(bundle, voice=voice, backend=backend, precision="fp16", strict=True) as gpu16:
            got16 = gpu16.synthesize(text)
            sr, mel = gpu16.sample_rate, gpu16.manifest.mel
        # Against the GPU's own FP32 stream: the same acoustic model on the same device, so the same
        # durations (the CPU's may round one the other way) and only the vocoder's precision differs.
        try:
            verdict = judge_audio("fp16", [got], [got16], sr, mel, backend=backend)
        except MissingExtraError:  # no pesq on this machine: the log-mel half of the gate alone, said so
            verdict = judge_audio("fp16", [got], [got16], sr, mel, backend=backend, pesq=False)
            out["fp16_note"] = "pesq not installed here: log-mel L1 only"
        out["fp16_gate"] = describe_verdict(verdict) + ("" if verdict.passed else "; FAILED: " + "; ".join(
            f.message() for f in verdict.failures))
    except SambertDeployError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def _symbols(syn: Any, text: str) -> list[str]:
    from sambert_deploy.symbols import format_units

    fe = syn.front_end()
    return [format_units(s) for s in fe.units(text)]


def child(spec: dict[str, Any], sampler: GpuSampler, timeout: float) -> dict[str, Any]:
    sampler.start()
    try:
        p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                           timeout=timeout)
        res = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else \
            {"error": f"exit {p.returncode}: {(p.stderr.strip().splitlines() or ['?'])[-1][:200]}"}
    except subprocess.TimeoutExpired:
        res = {"error": f"timed out after {timeout:.0f} s"}
    res["gpu_mb"] = sampler.peak_mb()
    return res


def fmt(r: dict[str, Any], key: str, f: str) -> str:
    v = r.get(key)
    return "-" if v is None else format(v, f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="demo_out/bundle")
    ap.add_argument("--model-dir", default="demo_out/model")
    ap.add_argument("--voice", default="demo_emo")
    ap.add_argument("--chars", type=int, nargs="*", default=[50, 150, 1000, 10000],
                    help="inputs of the first table (none: only the streams row)")
    ap.add_argument("--configs", nargs="+", default=["cuda-fp32", "cuda-fp16", "trt-fp16", "trt-fp32"],
                    choices=sorted(CONFIGS))
    ap.add_argument("--torch-max", type=int, default=1000, help="largest input the torch baseline runs (chars)")
    ap.add_argument("--torch-device", default="cuda")
    ap.add_argument("--no-parity", action="store_true")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--streams-config", default="cuda-fp32", choices=sorted(CONFIGS),
                    help="configuration of the streams-per-GPU rows")
    ap.add_argument("--streams-chars", type=int, default=150, help="characters each concurrent stream speaks")
    ap.add_argument("--streams-max", type=int, default=256, help="largest N tried (0: no streams rows)")
    ap.add_argument("--streams-time", type=float, default=300, help="seconds all streams rows may take together")
    ap.add_argument("--decoder-batch", type=int, help="streams per decoder call (default: the placement's)")
    ap.add_argument("--vocoder-batch", type=int, help="streams per vocoder call (default: the placement's)")
    ap.add_argument("--rtf-limit", type=float, default=0.1, help="every stream's RTF must stay at or under this")
    ap.add_argument("--first-limit", type=float, default=0.3, help="every stream's first audio, seconds")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        spec = json.loads(a.child)
        kind = spec.pop("kind")
        res = {"ours": run_ours, "torch": run_torch, "parity": run_parity, "streams": run_streams}[kind](**spec)
        print(json.dumps(res))
        return 0
    sampler = GpuSampler()
    print(f"GPU memory from NVML: {'yes' if sampler.ok else 'no (libnvidia-ml not found: peak GPU column empty)'}; "
          f"bundle {a.bundle}, voice {a.voice}; random weights (speed and memory only)")
    parity_failed = False
    # Parity first: it is the gate, and the long inputs below may run out of the machine's time.
    if not a.no_parity:
        backend = "cuda" if "cuda-fp32" in a.configs else CONFIGS[a.configs[0]]["backend"]
        p = child({"kind": "parity", "bundle": a.bundle, "voice": a.voice, "backend": backend}, sampler, a.timeout)
        p.pop("gpu_mb", None)
        print(f"parity on {backend} vs CPU FP32 (150 chars): {json.dumps(p)}")
        parity_failed = "error" in p
    if a.chars:
        print("| chars | config | runs | first audio s | RTF | peak GPU MB | RTF vs torch |")
        print("|---|---|---|---|---|---|---|")
    for n in a.chars:
        base: dict[str, Any] = {"error": f"skipped (> --torch-max {a.torch_max})"}
        if n <= a.torch_max:
            base = child({"kind": "torch", "model_dir": a.model_dir, "voice": a.voice, "chars": n,
                          "device": a.torch_device}, sampler, a.timeout)
        print(f"| {n} | torch ({a.torch_device}) | {base.get('runs', base.get('error', ''))} | {fmt(base, 'first', '.3f')} "
              f"| {fmt(base, 'rtf', '.3f')} | {fmt(base, 'gpu_mb', '.0f')} | 1.00 |", flush=True)
        for label in a.configs:
            r = child({"kind": "ours", "bundle": a.bundle, "voice": a.voice, "chars": n, "kwargs": CONFIGS[label]},
                      sampler, a.timeout)
            ratio = f"{base['rtf'] / r['rtf']:.1f}x" if "rtf" in r and "rtf" in base else "-"
            print(f"| {n} | {label} | {r.get('runs', r.get('error', ''))} | {fmt(r, 'first', '.3f')} | "
                  f"{fmt(r, 'rtf', '.3f')} | {fmt(r, 'gpu_mb', '.0f')} | {ratio} |", flush=True)
    if a.streams_max > 0:
        streams_rows(a, sampler)
    if parity_failed:
        print("gpu_bench: the parity check failed (see its line above)", file=sys.stderr)
        return 1
    return 0


def streams_rows(a: argparse.Namespace, sampler: GpuSampler) -> None:
    """N doubling while every stream keeps the limits (the last row printed is the first N that did not,
    or where the time or ``--streams-max`` ran out), then the torch rebuild one request at a time."""
    kwargs = dict(CONFIGS[a.streams_config])
    for key in ("decoder_batch", "vocoder_batch"):
        if getattr(a, key) is not None:
            kwargs[key] = getattr(a, key)
    print(f"\nstreams per GPU: {a.streams_chars} chars per stream, all started together; limits RTF <= "
          f"{a.rtf_limit} and first audio < {a.first_limit} s for every stream; {a.streams_time:.0f} s cap")
    print("| streams | config | runs | worst RTF | worst first audio s | mean decoder batch | decoder batch | "
          "mean vocoder batch | vocoder batch | peak GPU MB | within limits |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    t_end = time.monotonic() + a.streams_time
    n, best = 1, 0
    while n <= a.streams_max:
        left = t_end - time.monotonic()
        if left <= 0:
            print(f"(stopped before N={n}: --streams-time {a.streams_time:.0f} s spent)")
            break
        r = child({"kind": "streams", "bundle": a.bundle, "voice": a.voice, "n": n, "chars": a.streams_chars,
                   "kwargs": kwargs}, sampler, min(a.timeout, left))
        ok = "rtf" in r and r["rtf"] <= a.rtf_limit and r["first"] < a.first_limit
        print(f"| {n} | {a.streams_config} | {r.get('runs', r.get('error', ''))} | {fmt(r, 'rtf', '.3f')} | "
              f"{fmt(r, 'first', '.3f')} | {fmt(r, 'mean_batch', '.2f')} | {r.get('decoder_batch', '-')} | "
              f"{fmt(r, 'mean_voc_batch', '.2f')} | {r.get('vocoder_batch', '-')} | "
              f"{fmt(r, 'gpu_mb', '.0f')} | {'yes' if ok else 'no'} |", flush=True)
        if not ok:
            break
        best, n = n, n * 2
    print(f"streams within the limits on {a.streams_config}: {best} (largest N measured that kept them)")
    if a.torch_max >= a.streams_chars:
        t = child({"kind": "torch", "model_dir": a.model_dir, "voice": a.voice, "chars": a.streams_chars,
                   "device": a.torch_device}, sampler, a.timeout)
        if "total" in t:
            # One request after another: request k's first audio comes after k whole utterances.
            fits = int(min(a.first_limit / t["total"], a.rtf_limit * t["audio"] / t["total"]))
            print(f"| 1 | torch ({a.torch_device}), as ModelScope runs it | {t['runs']} | {t['rtf']:.3f} | "
                  f"{t['first']:.3f} | - | - | {fmt(t, 'gpu_mb', '.0f')} | derived: {fits} stream(s) "
                  "served one after another keep the limits |")
        else:
            print(f"| 1 | torch ({a.torch_device}) | {t.get('error', '')} | - | - | - | - | - | - |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
