"""Benchmark: the streaming ONNX runtime against the PyTorch-eager way ModelScope runs the model.

For inputs of about 15, 100, 300, 1000 and 3000 units (one symbol line each, the worst case: no
sentence punctuation) and each available backend, it prints time to first audio, RTF and peak RSS
(peak GPU memory on CUDA), and beside them the project's faithful torch rebuild run whole-utterance
(reference decoder loop keeping every attention map, whole-mel vocoder), as ratios. Every measurement
runs in a fresh process so peak RSS is its own. The baseline is skipped above ``--baseline-max`` units
(its [M, M] attention maps alone would need the memory printed instead).

    python scripts/benchmark.py [--bundle demo_out/bundle] [--sizes 15 100 300 1000 3000] [--gpu]
    python scripts/benchmark.py --sweep --sizes 100 1200   # vocoder chunk x max_ahead, runtime only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from sambert_deploy.runtime.backends import available_cpus
from sambert_deploy.utils import peak_rss_mb

SEED_TEXT = ("一个开源的语音合成工具，把声学模型和声码器从训练检查点导出成小而快的部署版本。"
             "我们先把文字转换成音素，再逐步生成梅尔频谱，最后用声码器一块一块地合成音频。")


def units_line(n: int) -> str:
    """One symbol line of exactly n units (front-end output repeated, #4 breaks turned into #1)."""
    from dataclasses import replace

    from sambert_deploy.frontend import FrontEnd, FrontEndOptions
    from sambert_deploy.symbols import format_units

    units = [u for s in FrontEnd(FrontEndOptions()).units(SEED_TEXT) for u in s]
    units = [replace(u, sy="#1") if u.break_level == 4 else u for u in units]
    return format_units((units * (n // len(units) + 1))[:n])


def run_ours(bundle: str, voice: str, n: int, backend: str, threads: int, chunk: int = 0, ahead: int = 0) -> dict:
    from sambert_deploy.runtime.synthesizer import StreamOptions, Synthesizer

    line = units_line(n)
    gpu_peak = None
    opts = StreamOptions(max_ahead=ahead or None, **({"vocoder_chunk": chunk} if chunk else {}))
    with Synthesizer(bundle, voice=voice, backend=backend, strict=True, threads=threads, options=opts) as syn:
        syn.synthesize(symbols=units_line(8))  # session warm-up outside the timing
        t0 = time.perf_counter()
        first = None
        samples = 0
        for c in syn.stream(symbols=line):
            if first is None:
                first = time.perf_counter() - t0
            samples += len(c.samples)
        total = time.perf_counter() - t0
        rate = syn.sample_rate
    if backend == "cuda":
        gpu_peak = _gpu_peak_mb()
    audio = samples / rate
    return {"first": first, "total": total, "audio": audio, "rtf": total / audio,
            "rss": peak_rss_mb(), "gpu": gpu_peak}


def run_torch(model_dir: str, voice: str, n: int, threads: int, device: str) -> dict:
    import torch

    from sambert_deploy.models.loading import load_hifigan, load_sambert, voice_files
    from sambert_deploy.symbols import encode_symbols

    torch.set_num_threads(threads)
    vf = voice_files(model_dir, voice)
    am, inv = load_sambert(vf.am_config, vf.am_ckpt)
    gen = load_hifigan(vf.voc_config, vf.voc_ckpt)
    am.to(device)
    gen.to(device)
    enc = encode_symbols(units_line(n), inv)
    args = [torch.from_numpy(a)[None].to(device) for a in (enc.ling, enc.emotion, enc.speaker)]
    with torch.no_grad():
        warm = encode_symbols(units_line(8), inv)
        am(*[torch.from_numpy(a)[None].to(device) for a in (warm.ling, warm.emotion, warm.speaker)])
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = am(*args)  # reference path: keeps every attention map, as ModelScope's call does
        valid = int(out["LR_length_rounded"][0])
        wav = gen(out["postnet_outputs"][0, :valid].T[None])[0, 0].cpu().numpy()
        if device == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
    audio = len(wav) / vf.sample_rate
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"first": total, "total": total, "audio": audio, "rtf": total / audio,
            "rss": peak_rss_mb(), "gpu": gpu}


def _gpu_peak_mb() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def child(kind: str, *args: str, timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--child", kind, *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="demo_out/bundle")
    ap.add_argument("--model-dir", default="demo_out/model")
    ap.add_argument("--voice", default="demo_emo")
    ap.add_argument("--sizes", type=int, nargs="+", default=[15, 100, 300, 1000, 3000])
    ap.add_argument("--threads", type=int, default=available_cpus())
    ap.add_argument("--baseline-max", type=int, default=1200, help="largest input the torch baseline runs")
    ap.add_argument("--gpu", action="store_true", help="also CUDA EP and torch on CUDA")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--sweep", action="store_true",
                    help="no baseline: the runtime alone for each --vocoder-chunks x --ahead (how the defaults were chosen)")
    ap.add_argument("--vocoder-chunks", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--ahead", type=int, nargs="+", default=[0], help="StreamOptions.max_ahead values (0: default)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "ours":
            res = run_ours(rest[0], rest[1], int(rest[2]), rest[3], *map(int, rest[4:]))
        else:
            res = run_torch(rest[0], rest[1], int(rest[2]), int(rest[3]), rest[4])
        print(json.dumps(res))
        return
    if not Path(a.bundle, "manifest.json").is_file():
        sys.exit(f"no bundle at {a.bundle}: run `make demo` first (or pass --bundle/--model-dir)")
    backends = ["cpu"] + (["cuda"] if a.gpu else [])
    if a.sweep:
        sweep(a, backends)
        return
    print(f"threads {a.threads}; bundle {a.bundle}; voice {a.voice}; baseline = torch rebuild, reference decoder loop, "
          "whole utterance", flush=True)
    hdr = ("| units | backend | audio s | ours first audio s | ours RTF | ours peak RSS MB | torch first audio s | "
           "torch RTF | torch peak RSS MB | RTF speed-up | first-audio / torch total | RSS ratio |")
    print(hdr)
    print("|---" * 12 + "|")
    for n in a.sizes:
        for be in backends:
            ours = child("ours", a.bundle, a.voice, str(n), be, str(a.threads), timeout=a.timeout)
            dev = "cuda" if be == "cuda" else "cpu"
            if n <= a.baseline_max:
                base = child("torch", a.model_dir, a.voice, str(n), str(a.threads), dev, timeout=a.timeout)
            else:
                steps = n * 6 // 3  # ~6 frames a unit, 3 frames a step
                gb = 2 * 12 * 8 * steps * steps * 4 / 2**30
                base = {"error": f"skipped (> --baseline-max; attention maps alone ~{gb:.0f} GB)"}
            print(_row(n, be, ours, base), flush=True)


def sweep(a: argparse.Namespace, backends: list[str]) -> None:
    print(f"threads {a.threads}; bundle {a.bundle}; voice {a.voice}; runtime only, first vocoder chunk 24")
    print("| units | backend | vocoder chunk | max_ahead | first audio s | RTF | peak RSS MB |")
    print("|---" * 7 + "|")
    for n in a.sizes:
        for be in backends:
            for chunk in a.vocoder_chunks:
                for w in a.ahead:
                    r = child("ours", a.bundle, a.voice, str(n), be, str(a.threads), str(chunk), str(w),
                              timeout=a.timeout)
                    cells = ([f"{r['first']:.3f}", f"{r['rtf']:.3f}", f"{r['rss']:.0f}"] if r and "error" not in r
                             else ["-", "-", (r or {}).get("error", "failed")])
                    print("| " + " | ".join([str(n), be, str(chunk), str(w), *cells]) + " |", flush=True)


def _row(n: int, be: str, o: dict | None, b: dict | None) -> str:
    def f(d: dict | None, k: str, fmt: str) -> str:
        if not d or "error" in d:
            return "-"
        v = d.get(k)
        return "-" if v is None else format(v, fmt)

    cells = [str(n), be, f(o, "audio", ".1f"), f(o, "first", ".3f"), f(o, "rtf", ".3f"), f(o, "rss", ".0f"),
             f(b, "first", ".2f"), f(b, "rtf", ".3f"), f(b, "rss", ".0f")]
    if o and b and "error" not in o and "error" not in b:
        cells += [f"{b['rtf'] / o['rtf']:.2f}x", f"{o['first'] / b['total']:.3f}", f"{b['rss'] / o['rss']:.1f}x"]
    else:
        note = (b or {}).get("error") or (o or {}).get("error") or ""
        cells += ["-", "-", note]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
