"""More of the vocoder in INT8 (issue 20 part 3): calibration methods x cross-layer equalization x
recipes with more INT8 convs than the default, on the real vocoder (universal HiFiGAN V1), judged by
the INT8 gate on every gate recording (ORT CPU, 2 threads, as scripts/quality.py scores).

    python scripts/int8_search.py                       # the whole table (markdown on stdout)
    python scripts/int8_search.py --methods minmax --equalize none weights --json out.json

Speed: single-thread ORT CPU RTF on one recording, the candidate and the default recipe run
alternately in the same process (--rtf-runs each), median; reported as candidate / default.
Only gate-passing configurations and each method's all-INT8 graph (the speed ceiling) are timed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sambert_deploy.calibration import DEFAULT_INT8, Int8Recipe, quantize_int8
from sambert_deploy.calibration.equalize import equalize
from sambert_deploy.quality import evaluate, fp32_reference, real_vocoder
from sambert_deploy.quality.audio import speech_set
from sambert_deploy.quality.harness import open_backend

# Every recipe here has more INT8 convs than DEFAULT_INT8 (36 of 78), except the default itself,
# which is the baseline row of each method. Stage = ConvTransposes before the conv (see conv_layers).
RECIPES = (
    DEFAULT_INT8,
    Int8Recipe(keep_roles=("pre", "post", "up", "*@4"), name="int8 res@1-3"),
    Int8Recipe(keep_roles=("pre", "post", "up@3", "*@4"), name="int8 res@1-3 + up@0-2"),
    Int8Recipe(keep_roles=("pre", "post", "up"), name="int8 res@all"),
    Int8Recipe(keep_roles=("pre", "post"), name="int8 res+up"),
    Int8Recipe(name="all int8"),
)
METHODS = ("minmax", "percentile", "entropy")
EQUALIZE = ("none", "weights", "activations")


@dataclass
class Row:
    recipe: str
    method: str
    equalize: str
    symmetric: bool
    int8: int
    total: int
    logmel_l1: float
    pesq_vs_fp32: float
    pesq_drop: float
    passed: bool
    failures: list[str]
    rtf: float | None = None
    rtf_default: float | None = None
    seconds: float = 0.0


def rtf_pair(candidate: Path, default: Path, feed: dict[str, np.ndarray], seconds: float, runs: int) -> tuple[float, float]:
    """Median single-thread RTF of candidate and default, run alternately (shared-machine noise hits both)."""
    times: dict[str, list[float]] = {"c": [], "d": []}
    with open_backend("cpu", candidate, 1) as c, open_backend("cpu", default, 1) as d:
        c.run(feed)
        d.run(feed)
        for _ in range(runs):
            for key, be in (("c", c), ("d", d)):
                t0 = time.perf_counter()
                be.run(feed)
                times[key].append(time.perf_counter() - t0)
    return float(np.median(times["c"])) / seconds, float(np.median(times["d"])) / seconds


def table(rows: list[Row]) -> str:
    lines = ["| recipe | calibration | equalization | INT8 convs | worst log-mel L1 | worst PESQ vs FP32 "
             "| worst PESQ drop | INT8 gate | RTF 1t (default in same run) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rtf = f"{r.rtf:.3f} ({r.rtf_default:.3f})" if r.rtf is not None and r.rtf_default is not None else "—"
        cal = r.method + (", sym. int8 act." if r.symmetric else "")
        lines.append(f"| {r.recipe} | {cal} | {r.equalize} | {r.int8}/{r.total} | {r.logmel_l1:.3f} "
                     f"| {r.pesq_vs_fp32:.2f} | {r.pesq_drop:+.2f} | {'pass' if r.passed else 'fail'} | {rtf} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--equalize", nargs="+", choices=EQUALIZE, default=list(EQUALIZE))
    ap.add_argument("--recipes", nargs="+", help="recipe names to run (default: all)")
    ap.add_argument("--symmetric", action="store_true", help="also symmetric int8 activations for each configuration")
    ap.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant-style migration strength")
    ap.add_argument("--rtf-runs", type=int, default=5)
    ap.add_argument("--no-rtf", action="store_true")
    ap.add_argument("--json", type=Path, help="append each row to this JSON file as it is measured")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    recipes = [r for r in RECIPES if not args.recipes or r.name in args.recipes]
    voc = real_vocoder()
    recs = speech_set("gate")
    cal = [r.feed() for r in speech_set("calibration")]
    ref = fp32_reference(voc.path, recs)
    clip = recs[0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sambert-int8-search-") as tmp:
        work = Path(tmp)
        default = work / "default.onnx"
        quantize_int8(voc.path, default, cal, DEFAULT_INT8, calibration_cache=work / "cache-none-minmax.json")
        for eq in args.equalize:
            src = voc.path
            if eq != "none":
                src = work / f"eq-{eq}.onnx"
                _, rep = equalize(voc.path, src, mode=eq, feeds=cal, alpha=args.alpha)
                print(f"equalize {eq}: {len(rep.pairs)} pairs, scales {rep.scale_min:.3g}..{rep.scale_max:.3g}",
                      file=sys.stderr, flush=True)
            for method in args.methods:
                for sym in (False, True) if args.symmetric else (False,):
                    cache = work / f"cache-{eq}-{method}-{int(sym)}.json"
                    for recipe in recipes:
                        t0 = time.perf_counter()
                        rc = Int8Recipe(recipe.keep_roles, recipe.keep_layers, recipe.name, symmetric=sym)
                        dst = work / "candidate.onnx"
                        q = quantize_int8(src, dst, cal, rc, calibrate_method=method, calibration_cache=cache)
                        rep_q = evaluate(recipe.name, dst, "cpu", ref, measure_rtf=False, precision="int8")
                        row = Row(recipe.name, method, eq, sym, len(q.quantized), len(q.quantized) + len(q.kept_fp32),
                                  rep_q.worst("logmel_l1"), rep_q.worst("pesq_vs_fp32"), rep_q.worst("pesq_drop"),
                                  rep_q.passed, [f.message() for f in rep_q.failures])
                        timed = rep_q.passed or recipe.name == "all int8"
                        if timed and not args.no_rtf and not (recipe is DEFAULT_INT8 and eq == "none"
                                                              and method == "minmax" and not sym):
                            row.rtf, row.rtf_default = rtf_pair(dst, default, clip.feed(), clip.seconds, args.rtf_runs)
                        row.seconds = time.perf_counter() - t0
                        rows.append(row)
                        print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)
                        if args.json:
                            old = json.loads(args.json.read_text()) if args.json.is_file() else []
                            args.json.write_text(json.dumps(old + [row.__dict__], indent=1))
    print(table(rows))
    print(f"\nRTF clip: {clip.name} ({clip.seconds:.1f} s); gate recordings: " + ", ".join(r.name for r in recs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
