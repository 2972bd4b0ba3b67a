"""More of the vocoder in INT8 (issue 20 part 3): calibration methods x cross-layer equalization x
recipes with more INT8 convs than the default, on the real vocoder (universal HiFiGAN V1), judged by
the INT8 gate on every gate recording (ORT CPU, 2 threads, as scripts/quality.py scores).

    python scripts/int8_search.py                       # the whole table (markdown on stdout)
    python scripts/int8_search.py --methods minmax --equalize none weights --json out.json
    python scripts/int8_search.py --equalize none --methods percentile-99.99 --layer-recipes --openvino
    python scripts/int8_search.py --diagnose        # int8-rounded weights, FP32 activations

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sambert_deploy.calibration import (
    DEFAULT_INT8,
    INT8_RECIPES,
    Calibration,
    ConvLayer,
    Int8Recipe,
    conv_layers,
    quantize_int8,
)
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
    # the portable (role) form of the per-layer "res@1-2 + res@3 convs1" below: the same 45 convs
    Int8Recipe(keep_roles=INT8_RECIPES["res@1-2+res1@3"].keep_roles, name="int8 res@1-2 + res1@3"),
)


def _keep_unless(name: str, int8: Callable[[ConvLayer], bool]) -> Callable[[list[ConvLayer]], Int8Recipe]:
    """A per-layer recipe (node names of this vocoder, not portable): INT8 exactly where ``int8`` says."""
    return lambda layers: Int8Recipe(keep_layers=tuple(x.name for x in layers if not int8(x)), name=name)


def _res(x: ConvLayer, stages: tuple[int, ...]) -> bool:
    return x.role == "res" and x.stage in stages


# Per-layer choices from docs/quality.md's sensitivity sweep: stage 3's residual convs except its
# outliers (resblocks.8/convs2.2 alone costs 0.17 nats; the convs1.* are all <= 0.025), and up@1 (0.027).
LAYER_RECIPES = (
    _keep_unless("int8 res@1-2 + up@1", lambda x: _res(x, (1, 2)) or (x.role == "up" and x.stage == 1)),
    _keep_unless("int8 res@1-2 + res@3 convs1", lambda x: _res(x, (1, 2)) or (_res(x, (3,)) and "convs1" in x.name)),
    _keep_unless("int8 res@1-3 but resblocks.8", lambda x: _res(x, (1, 2, 3)) and "resblocks.8/" not in x.name),
    _keep_unless("int8 res@1-3 but resblocks.8/convs2.2",
                 lambda x: _res(x, (1, 2, 3)) and "resblocks.8/convs2.2" not in x.name),
)
# "percentile" and "entropy" are ORT's defaults (99.999th percentile; entropy with 128 histogram bins
# for 128 quantized bins, i.e. one candidate threshold: MinMax); quantize_int8 runs the calibrator
# itself, so the bin count and the percentile reach it.
METHODS = {"minmax": Calibration(), "percentile": Calibration("percentile"), "entropy": Calibration("entropy"),
           "percentile-99.99": Calibration("percentile", 99.99), "entropy-2048": Calibration("entropy", num_bins=2048)}
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
    openvino: str = ""  # with --openvino, for the ORT-passing rows: "pass"/"fail" + worst log-mel L1
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


def fake_quant_weights(src: Path, dst: Path, names: set[str]) -> None:
    """FP32 graph whose ``names`` convs have per-output-channel symmetric int8-rounded weights, the
    activations untouched: separates weight error from activation error (a diagnostic, no speed-up)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    # Output channels are axis 0 of a Conv weight, axis 1 of a ConvTranspose's (group 1).
    axes = {n.input[1]: int(n.op_type == "ConvTranspose") for n in proto.graph.node if n.name in names}
    for init in proto.graph.initializer:
        if init.name in axes:
            w = numpy_helper.to_array(init).astype(np.float32)
            axis = axes[init.name]
            red = tuple(i for i in range(w.ndim) if i != axis)
            scale = np.maximum(np.abs(w).max(axis=red, keepdims=True), 1e-12) / 127.0
            init.CopyFrom(numpy_helper.from_array((np.round(w / scale).clip(-127, 127) * scale).astype(np.float32),
                                                  init.name))
    onnx.save(proto, str(dst))


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
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--equalize", nargs="+", choices=EQUALIZE, default=list(EQUALIZE))
    ap.add_argument("--recipes", nargs="+", help="recipe names to run (default: all)")
    ap.add_argument("--layer-recipes", action="store_true", help="also the per-layer (node-name) recipes")
    ap.add_argument("--diagnose", action="store_true",
                    help="only: int8-rounded weights with FP32 activations (is the error in weights or activations?)")
    ap.add_argument("--symmetric", action="store_true", help="also symmetric int8 activations for each configuration")
    ap.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant-style migration strength")
    ap.add_argument("--rtf-runs", type=int, default=5)
    ap.add_argument("--no-rtf", action="store_true")
    ap.add_argument("--openvino", action="store_true", help="also judge the ORT-passing rows on OpenVINO")
    ap.add_argument("--json", type=Path, help="append each row to this JSON file as it is measured")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    voc = real_vocoder()
    recipes = list(RECIPES) + ([make(conv_layers(voc.path)) for make in LAYER_RECIPES] if args.layer_recipes else [])
    recipes = [r for r in recipes if not args.recipes or r.name in args.recipes]
    recs = speech_set("gate")
    cal = [r.feed() for r in speech_set("calibration")]
    ref = fp32_reference(voc.path, recs)
    clip = recs[0]
    rows: list[Row] = []
    if args.diagnose:
        layers = conv_layers(voc.path)
        with tempfile.TemporaryDirectory(prefix="sambert-int8-diag-") as tmp:
            for label, pick in (("weights only, all convs", lambda x: True),
                                ("weights only, res@3-4 + up@3 + post", lambda x: x.stage >= 3 and x.role != "pre")):
                names = {x.name for x in layers if pick(x)}
                dst = Path(tmp) / "wq.onnx"
                fake_quant_weights(voc.path, dst, names)
                r = evaluate(label, dst, "cpu", ref, measure_rtf=False, precision="int8")
                rows.append(Row(label, "— (fp32 activations)", "none", False, len(names), len(layers),
                                r.worst("logmel_l1"), r.worst("pesq_vs_fp32"), r.worst("pesq_drop"), r.passed,
                                [f.message() for f in r.failures]))
                print(table([rows[-1]]).splitlines()[-1], file=sys.stderr, flush=True)
        print(table(rows))
        return 0
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
                        q = quantize_int8(src, dst, cal, rc, calibrate_method=METHODS[method], calibration_cache=cache)
                        rep_q = evaluate(recipe.name, dst, "cpu", ref, measure_rtf=False, precision="int8")
                        row = Row(recipe.name, method, eq, sym, len(q.quantized), len(q.quantized) + len(q.kept_fp32),
                                  rep_q.worst("logmel_l1"), rep_q.worst("pesq_vs_fp32"), rep_q.worst("pesq_drop"),
                                  rep_q.passed, [f.message() for f in rep_q.failures])
                        if rep_q.passed and args.openvino:
                            ov = evaluate(recipe.name, dst, "openvino", ref, measure_rtf=False, precision="int8")
                            row.openvino = (f"{'pass' if ov.passed else 'fail'} (L1 {ov.worst('logmel_l1'):.3f}, "
                                            f"PESQ vs FP32 {ov.worst('pesq_vs_fp32'):.2f}, "
                                            f"drop {ov.worst('pesq_drop'):+.2f})")
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
    for r in rows:
        if r.openvino:
            print(f"OpenVINO, {r.recipe} / {r.method} / {r.equalize}: {r.openvino}")
    print(f"\nRTF clip: {clip.name} ({clip.seconds:.1f} s); gate recordings: " + ", ".join(r.name for r in recs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
