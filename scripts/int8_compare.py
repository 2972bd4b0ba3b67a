"""INT8 recipes side by side (issue 20 part 3): does a candidate pass the INT8 gate, and is it faster
than the default, on the real vocoder and on a bundle's KAN-TTS vocoder, ONNX Runtime CPU and OpenVINO?

    python scripts/int8_compare.py                                  # res@1-2 vs res@1-2+res1@3
    python scripts/int8_compare.py --runs 9 --threads 1 2 --bundle /tmp/bundle --voice demo_emo
    python scripts/int8_compare.py --no-gate --recipes res@1-2 res@1-2+res1@3 --fp32

1. The real vocoder (universal HiFiGAN V1): each recipe quantized with its own calibration on the
   calibration speech, judged by the INT8 gate on every gate recording, ORT CPU and OpenVINO (2 threads,
   as scripts/quality.py scores), the worst recording of each metric.
2. A bundle's vocoder (``--bundle``, KAN-TTS; random weights in the demo bundle, so its gate says only
   whether the recipe travels): calibrated on half the voice's calibration-corpus mels, judged against
   FP32 on the other half, as ``sambert-deploy quantize`` does.
3. Speed: for each vocoder x backend x threads, every recipe's session open at once and run in turn,
   ``--runs`` rounds (one round = each recipe once, the order rotating), median per recipe; RTF on one
   input (real: zh_gcin_phrase; bundle: its longest judge sentence). Ratios are against the first
   recipe of the same round set, so machine load shared by all of them cancels.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sambert_deploy.calibration import INT8_RECIPES, Int8Recipe, conv_layers, int8_recipe, quantize_int8
from sambert_deploy.quality.harness import open_backend
from sambert_deploy.runtime.precision import precision_hint

BACKENDS = ("cpu", "openvino")


@dataclass
class Graph:
    label: str  # recipe name, or "fp32"
    path: Path
    int8: int
    total: int


@dataclass
class Speed:
    vocoder: str
    backend: str
    threads: int
    rtf: dict[str, float]  # label -> median RTF
    spread: dict[str, tuple[float, float]]  # label -> (min, max) RTF


def build(src: Path, recipes: list[Int8Recipe], feeds: list[dict[str, np.ndarray]], work: Path, tag: str,
          fp32: bool) -> list[Graph]:
    total = len(conv_layers(src))
    graphs = [Graph("fp32", src, 0, total)] if fp32 else []
    for r in recipes:
        dst = work / f"{tag}-{r.name.replace('+', '_').replace('@', 'at')}.onnx"
        with contextlib.redirect_stdout(sys.stderr):  # ORT's calibrators print progress; keep stdout the tables
            rep = quantize_int8(src, dst, feeds, r)
        graphs.append(Graph(r.name, dst, len(rep.quantized), total))
    return graphs


def gate_real(graphs: list[Graph], backends: list[str]) -> list[str]:
    from sambert_deploy.quality import evaluate, fp32_reference
    from sambert_deploy.quality.audio import speech_set

    recs = speech_set("gate")
    ref = fp32_reference(_real_path(), recs)
    lines = ["| vocoder | recipe | backend | INT8 convs | worst log-mel L1 | worst PESQ vs FP32 | worst PESQ drop "
             "| INT8 gate |", "|---|---|---|---|---|---|---|---|"]
    for g in graphs:
        if g.label == "fp32":
            continue
        for b in backends:
            r = evaluate(g.label, g.path, b, ref, precision_hint=precision_hint("int8", b), measure_rtf=False,
                         precision="int8")
            why = "" if r.passed else " (" + "; ".join(f.message() for f in r.failures)[:200] + ")"
            lines.append(f"| HiFiGAN V1 | {g.label} | {b} | {g.int8}/{g.total} | {r.worst('logmel_l1'):.3f} "
                         f"| {r.worst('pesq_vs_fp32'):.2f} | {r.worst('pesq_drop'):+.2f} "
                         f"| {'pass' if r.passed else 'fail'}{why} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def _real_path() -> Path:
    from sambert_deploy.quality import real_vocoder

    return real_vocoder().path


def bundle_mels(bundle: Path, voice: str, max_frames: int = 400) -> tuple[Path, list[dict[str, np.ndarray]],
                                                                          list[np.ndarray], int, dict]:
    """The voice's FP32 vocoder, calibration feeds (even sentences) and judge mels (odd), as quantize splits them."""
    from sambert_deploy.calibration.mels import CalibrationMels, default_corpus
    from sambert_deploy.runtime.manifest import read_manifest

    m = read_manifest(bundle)
    vm = m.voice(voice)
    mels = CalibrationMels(m, vm, default_corpus()).mels()
    calib = [{"mel": np.ascontiguousarray(x[:max_frames].T[None])} for x in mels[0::2]]
    judge = [np.ascontiguousarray(x[:max_frames].T[None]) for x in mels[1::2]]
    return m.root / vm.folder / vm.graphs["vocoder"].file, calib, judge, m.sample_rate, dict(m.mel)


def gate_bundle(graphs: list[Graph], judge: list[np.ndarray], sr: int, mel_cfg: dict, backends: list[str]) -> list[str]:
    from sambert_deploy.calibration.bundle import judge_audio

    def run_all(path: Path, b: str) -> list[np.ndarray]:
        with open_backend(b, path, 2, precision_hint("int8", b)) as be:
            return [be.run({"mel": x})["audio"].reshape(-1) for x in judge]

    ref = run_all(next(g.path for g in graphs if g.label == "fp32"), "cpu")
    lines = []
    for g in graphs:
        if g.label == "fp32":
            continue
        for b in backends:
            v = judge_audio("int8", ref, run_all(g.path, b), sr, mel_cfg, backend=b)
            worst = ", ".join(f"{k} {x:.3f}" for k, x in sorted(v.metrics.items()))
            lines.append(f"| bundle (KAN-TTS) | {g.label} | {b} | {g.int8}/{g.total} | {worst} "
                         f"| {'pass' if v.passed else 'fail'} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def speed(vocoder: str, graphs: list[Graph], feed: dict[str, np.ndarray], seconds: float, backend: str,
          threads: int, runs: int) -> Speed:
    times: dict[str, list[float]] = {g.label: [] for g in graphs}
    hint = precision_hint("int8", backend)
    sessions = [(g.label, open_backend(backend, g.path, threads, hint)) for g in graphs]
    try:
        for _, be in sessions:
            be.run(feed)
            be.run(feed)
        for i in range(runs):
            k = i % len(sessions)  # rotate who goes first: a burst of other load does not always hit one
            for label, be in sessions[k:] + sessions[:k]:
                t0 = time.perf_counter()
                be.run(feed)
                times[label].append((time.perf_counter() - t0) / seconds)
    finally:
        for _, be in sessions:
            be.close()
    return Speed(vocoder, backend, threads, {k: statistics.median(v) for k, v in times.items()},
                 {k: (min(v), max(v)) for k, v in times.items()})


def speed_table(rows: list[Speed], base: str) -> list[str]:
    labels = list(rows[0].rtf)
    head = "| vocoder | backend | threads | " + " | ".join(f"{x} RTF (min-max)" for x in labels) + \
           " | " + " | ".join(f"{x} / {base}" for x in labels if x != base) + " |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for s in rows:
        cells = [f"{s.rtf[x]:.3f} ({s.spread[x][0]:.3f}-{s.spread[x][1]:.3f})" for x in labels]
        ratios = [f"{s.rtf[x] / s.rtf[base]:.2f}" for x in labels if x != base]
        lines.append(f"| {s.vocoder} | {s.backend} | {s.threads} | " + " | ".join(cells + ratios) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["res@1-2", "res@1-2+res1@3"], choices=list(INT8_RECIPES),
                    help="the first is the baseline of the ratios")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--bundle", type=Path, help="also a bundle's vocoder (KAN-TTS); use a copy: its calibration "
                                                 "mels are cached in the voice folder")
    ap.add_argument("--voice", default=None)
    ap.add_argument("--fp32", action="store_true", help="also time the FP32 graph")
    ap.add_argument("--no-gate", action="store_true")
    ap.add_argument("--no-real", action="store_true", help="skip the real vocoder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    recipes = [int8_recipe(n) for n in args.recipes]
    out: list[str] = []
    rows: list[Speed] = []
    with tempfile.TemporaryDirectory(prefix="sambert-int8-compare-") as tmp:
        work = Path(tmp)
        plan = []
        if not args.no_real:
            from sambert_deploy.quality.audio import speech_set

            src = _real_path()
            graphs = build(src, recipes, [r.feed() for r in speech_set("calibration")], work, "real", True)
            for g in graphs:
                print(f"HiFiGAN V1 {g.label}: {g.int8}/{g.total} convs INT8", file=sys.stderr, flush=True)
            if not args.no_gate:
                out += gate_real(graphs, args.backends)
            clip = speech_set("gate")[0]
            plan.append(("HiFiGAN V1", graphs, clip.feed(), clip.seconds))
        if args.bundle is not None:
            src, calib, judge, sr, mel_cfg = bundle_mels(args.bundle, args.voice)
            graphs = build(src, recipes, calib, work, "bundle", True)
            for g in graphs:
                print(f"bundle {g.label}: {g.int8}/{g.total} convs INT8", file=sys.stderr, flush=True)
            if not args.no_gate:
                table = gate_bundle(graphs, judge, sr, mel_cfg, args.backends)
                out += ["", "| vocoder | recipe | backend | INT8 convs | worst clip | own gate |", "|---|---|---|---|---|---|"]
                out += table
            longest = max(judge, key=lambda x: x.shape[-1])
            hop = int(mel_cfg.get("hop_length", 200))
            plan.append(("bundle (KAN-TTS)", graphs, {"mel": longest}, longest.shape[-1] * hop / sr))
        for name, graphs, feed, seconds in plan:
            timed = [g for g in graphs if args.fp32 or g.label != "fp32"]
            for b in args.backends:
                for t in args.threads:
                    rows.append(speed(name, timed, feed, seconds, b, t, args.runs))
                    print(speed_table([rows[-1]], args.recipes[0])[-1], file=sys.stderr, flush=True)
    print("\n".join(out))
    if rows:
        print()
        print("\n".join(speed_table(rows, args.recipes[0])))
        print(f"\n{args.runs} rounds per cell; RTF = run time / audio seconds of one input "
              f"({', '.join(f'{n}: {s:.2f} s' for n, _, _, s in plan)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
