"""``sambert-deploy export``: model directory -> bundle (ONNX graphs + manifest), then the parity gate."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import ExportError, InvalidInputError
from ..gates import Comparator, GateError
from ..models.hifigan import Generator, receptive_field
from ..models.loading import VoiceFiles, list_voices, load_hifigan, load_sambert, read_yaml, voice_files
from ..models.sambert import KanTtsSAMBERT
from ..runtime.manifest import (
    MANIFEST,
    AcousticInfo,
    DurationFlip,
    GateCase,
    GateFailure,
    GateRecord,
    GraphInfo,
    Manifest,
    VocoderInfo,
    VoiceManifest,
    read_manifest,
    write_manifest,
)
from ..symbols import EncodedUnits, Inventories
from ..utils import clean_beside, file_sha256, staging_beside, swap_into_place, writer_lock
from . import require_export_extra
from .exporter import audit_graph, check_graph_parity, export_graph
from .graphs import GRAPHS

log = logging.getLogger(__name__)

GATE_UNITS = (1, 2, 37, 811)  # lengths never traced: one unit, two, an odd size, > max_len (800)
MEL_ATOL = 1e-4
WAV_ATOL = 1e-4
BOUNDARY_TOL = 1e-3  # a flipped rounding within this of x.5 (and torch/ONNX d this close) is float noise


@dataclass
class ExportOptions:
    opset: int = 17
    force: bool = False
    check: bool = True
    gate_units: tuple[int, ...] = GATE_UNITS
    seed: int = 0


@dataclass
class VoiceReport:
    name: str
    seconds_export: float = 0.0
    seconds_gate: float = 0.0
    bytes: int = 0
    gate: list[GateCase] = field(default_factory=list)


@dataclass
class ExportReport:
    bundle: Path
    voices: list[VoiceReport]
    seconds: float

    def summary(self) -> str:
        lines = [f"bundle {self.bundle} ({sum(v.bytes for v in self.voices) / 1e6:.1f} MB) in {self.seconds:.1f} s"]
        for v in self.voices:
            lines.append(f"  voice {v.name}: export {v.seconds_export:.1f} s, gate {v.seconds_gate:.1f} s, "
                         f"{v.bytes / 1e6:.1f} MB")
            for g in v.gate:
                lines.append(f"    {g.case}: units {g.units}, frames {g.frames}, mel max-abs {g.mel_err:.2e}, "
                             f"wav max-abs {g.wav_err:.2e}" + (f", {g.note}" if g.note else ""))
        return "\n".join(lines)


def check_output(out: Path, force: bool) -> None:
    """Refuse an output path that is a file, a non-empty non-bundle folder, or a bundle without ``force``."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory; choose another -o path")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(f"output {out} exists and is not empty; pass --force to overwrite it or choose another -o")
        if not (out / MANIFEST).is_file():
            raise ExportError(f"output {out} is not empty and is not a bundle; refusing to overwrite it even with "
                              "--force: choose an empty or new -o path")


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A fresh hidden folder next to ``out`` (same filesystem, so it can be renamed into place).

    It is deleted when the block raises anything, KeyboardInterrupt included; on success the caller
    has moved it into place with :func:`replace_bundle`.
    """
    try:
        tmp = staging_beside(out)
    except OSError as e:
        raise ExportError(f"output {out} is not writable ({e.strerror}); choose a writable -o path") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_bundle(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished bundle ``tmp`` to ``out``: a previous bundle there is exchanged with it in one
    atomic step (see :func:`~sambert_deploy.utils.swap_into_place`), so a kill at any instant leaves the
    old bundle or the new one at ``out``, and removed only once the new one is in.

    Graph paths in the manifest are relative to the bundle folder, so the rename keeps it valid.
    """
    check_output(out, force)  # again: the folder may have changed during a long export
    try:
        swap_into_place(tmp, out)
    except OSError as e:
        raise ExportError(f"could not move the new bundle {tmp} to {out} ({e.strerror}); the previous bundle, "
                          "if any, is unchanged: check permissions on the -o folder and retry") from None


def _metadata(voice: str, am: KanTtsSAMBERT, gen: Generator, vf: VoiceFiles, opset: int,
              hashes: dict[str, str]) -> dict[str, str]:
    import onnx

    return {"model_type": "kantts-sambert-hifigan", "schema_version": "1", "voice": voice,
            "sample_rate": str(vf.sample_rate), "hop": str(gen.cfg.hop), "num_mels": str(am.cfg.num_mels),
            "outputs_per_step": str(am.cfg.outputs_per_step), "vocoder_causal": str(gen.cfg.causal).lower(),
            "vocoder_context": json.dumps(receptive_field(gen.cfg)), "am_sha256": hashes["am"], "voc_sha256": hashes["voc"],
            "sambert_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__, "opset": str(opset)}


def export_voice(vf: VoiceFiles, out: Path, options: ExportOptions) -> tuple[VoiceManifest, VoiceReport, KanTtsSAMBERT,
                                                                              Generator]:
    t0 = time.perf_counter()
    am, inv = load_sambert(vf.am_config, vf.am_ckpt, vf.has_mask)
    gen = load_hifigan(vf.voc_config, vf.voc_ckpt)
    hashes = {"am": file_sha256(vf.am_ckpt), "voc": file_sha256(vf.voc_ckpt)}
    folder = f"voices/{vf.name}"
    meta = _metadata(vf.name, am, gen, vf, options.opset, hashes)
    graphs: dict[str, GraphInfo] = {}
    failures: list[GateFailure] = []
    for spec in GRAPHS:
        model = am if spec.part == "am" else gen
        path = out / folder / f"{spec.name}.onnx"
        export_graph(spec, model, path, meta, options.opset, options.seed)
        failures += audit_graph(spec, path)
        if options.check:
            failures += check_graph_parity(spec, model, path)
        graphs[spec.name] = GraphInfo(spec.name, path.name, file_sha256(path), spec.inputs, spec.outputs)
    if failures:
        raise GateError(failures)
    c = am.cfg
    pn = am.mel_postnet.fsmn
    ctx_l, ctx_r = receptive_field(gen.cfg)
    acoustic = AcousticInfo(
        outputs_per_step=c.outputs_per_step, num_mels=c.num_mels, embedding_dim=c.embedding_dim,
        projection_units=c.encoder_projection_units, d_mem=c.d_mem, dur_lstm_layers=2,
        dur_lstm_units=c.dur_pred_lstm_units, decoder_layers=c.decoder_num_layers, decoder_heads=c.decoder_num_heads,
        decoder_head_dim=c.decoder_num_units // c.decoder_num_heads, postnet_left=pn.left_context,
        postnet_right=pn.right_context, postnet_lstm_units=c.postnet_lstm_units,
        postnet_memory_units=c.postnet_num_memory_units)
    vocoder = VocoderInfo(causal=gen.cfg.causal, hop=gen.cfg.hop, context_left=ctx_l, context_right=ctx_r,
                          in_channels=gen.cfg.in_channels)
    provenance = {"am_checkpoint": str(vf.am_ckpt), "am_sha256": hashes["am"], "voc_checkpoint": str(vf.voc_ckpt),
                  "voc_sha256": hashes["voc"], "am_config": str(vf.am_config), "voc_config": str(vf.voc_config)}
    vm = VoiceManifest(vf.name, folder, acoustic, vocoder, inv, graphs, provenance)
    _check_inventory_consistency(inv, am)
    report = VoiceReport(vf.name, seconds_export=time.perf_counter() - t0,
                         bytes=sum((out / folder / g.file).stat().st_size for g in graphs.values()))
    return vm, report, am, gen


def _check_inventory_consistency(inv: Inventories, am: KanTtsSAMBERT) -> None:
    sizes = inv.sizes()
    if sizes["sy"] != am.cfg.sy or sizes["speaker"] != am.cfg.speaker:
        raise ExportError(f"inventory sizes {sizes} disagree with the network built ({am.cfg}); this is a bug")


def export_model(model_dir: str | Path | None, out: str | Path, voices: list[str] | None = None,
                 all_voices: bool = False, options: ExportOptions | None = None,
                 explicit: VoiceFiles | None = None) -> ExportReport:
    """Export voices of a ModelScope model directory (or one explicit voice) into a bundle and gate it."""
    require_export_extra()
    options = options or ExportOptions()
    t0 = time.perf_counter()
    if explicit is not None:
        files = [explicit]
        sample_rate = explicit.sample_rate
    elif model_dir is None:
        raise InvalidInputError("export needs a model directory (model_dir / MODEL_DIR) or explicit voice files "
                                "(explicit= / --am and --voc)")
    else:
        names = list_voices(model_dir)
        chosen = names if all_voices else (voices or names[:1])
        files = [voice_files(model_dir, v) for v in chosen]
        sample_rate = files[0].sample_rate
    out = Path(out)
    try:
        clean_beside(out)  # what killed runs left: a half-done swap rolled back, their staging removed
    except OSError as e:
        raise ExportError(f"could not restore {out} from what an interrupted export set aside beside it "
                          f"({e.strerror}); check permissions on {out.parent}") from None
    check_output(out, options.force)
    with _bundle_lock(out), staging_dir(out) as tmp:
        reports = _export_into(tmp, model_dir, files, sample_rate, options)
        replace_bundle(tmp, out, options.force)
    return ExportReport(out, reports, time.perf_counter() - t0)


def _bundle_lock(out: Path) -> AbstractContextManager[None]:
    """The writer lock of the bundle being replaced (a quantize running on it would write the old
    bundle's manifest over the new one); a new output has no one else writing it."""
    return writer_lock(out) if (out / MANIFEST).is_file() else nullcontext()


def _export_into(tmp: Path, model_dir: str | Path | None, files: list[VoiceFiles], sample_rate: int,
                 options: ExportOptions) -> list[VoiceReport]:
    """Export every voice into ``tmp``, write the manifest, gate it and record the gate in the manifest."""
    vms: list[VoiceManifest] = []
    reports: list[VoiceReport] = []
    models: dict[str, tuple[KanTtsSAMBERT, Generator]] = {}
    mel_info: dict[str, Any] = {}
    for vf in files:
        vm, rep, am, gen = export_voice(vf, tmp, options)
        vms.append(vm)
        reports.append(rep)
        models[vf.name] = (am, gen)
        audio = read_yaml(vf.voc_config).get("audio_config", {}) or {}
        mel_info = {k: audio[k] for k in ("n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax",
                                          "min_level_db", "ref_level_db", "norm_type") if k in audio}
        mel_info["normalization"] = "mean_std with corpus statistics (not shipped; the AM output feeds the vocoder as is)"
    provenance = {"sambert_deploy": __version__, "torch": torch.__version__, "python": platform.python_version(),
                  "opset": options.opset, "source": str(model_dir) if model_dir else "explicit paths"}
    try:
        import onnx

        provenance["onnx"] = onnx.__version__
    except ImportError:  # pragma: no cover - require_export_extra checked it
        pass
    if not options.check:
        write_manifest(tmp, sample_rate, mel_info, [replace(v, gate=GateRecord(False)) for v in vms], provenance)
        return reports
    write_manifest(tmp, sample_rate, mel_info, vms, provenance)
    manifest = read_manifest(tmp)
    failures: list[GateFailure] = []
    gated: list[VoiceManifest] = []
    for rep, vm in zip(reports, vms, strict=True):
        g0 = time.perf_counter()
        am, gen = models[rep.name]
        rep.gate, f = pipeline_gate(manifest, rep.name, am, gen, options.gate_units, options.seed)
        failures += f
        rep.seconds_gate = time.perf_counter() - g0
        gated.append(replace(vm, gate=GateRecord(True, not f, tuple(rep.gate), gate_tolerances(options), tuple(f))))
    if failures:
        raise GateError(failures)
    write_manifest(tmp, sample_rate, mel_info, gated, provenance)
    return reports


def gate_tolerances(options: ExportOptions) -> dict[str, Any]:
    """The bounds the gate held the bundle to, as recorded in the manifest."""
    return {"mel_atol": MEL_ATOL, "wav_atol": WAV_ATOL, "boundary_tol": BOUNDARY_TOL,
            "unit_counts": list(options.gate_units), "seed": options.seed,
            "graphs": {g.name: {"atol": g.atol, "rtol": g.rtol} for g in GRAPHS}}


def duration_flips(torch_reps: np.ndarray, torch_d: np.ndarray, onnx_reps: np.ndarray,
                   onnx_d: np.ndarray) -> list[DurationFlip]:
    """Every unit whose rounded duration (int64 [U]) differs; d are the unrounded f32 [U] durations.

    A flip is a rounding-boundary case when torch's d is within BOUNDARY_TOL of x.5 and ONNX's d is
    within BOUNDARY_TOL of torch's: float noise decided the rounding. Anything else is a real error.
    """
    flips = []
    for k in np.flatnonzero(np.asarray(torch_reps) != np.asarray(onnx_reps)):
        td, od = float(torch_d[k]), float(onnx_d[k])
        boundary = abs(td % 1 - 0.5) <= BOUNDARY_TOL and abs(td - od) <= BOUNDARY_TOL
        flips.append(DurationFlip(int(k), td, od, boundary))
    return flips


def random_units(inv: Inventories, n: int, rng: np.random.Generator, speaker: str | None = None) -> EncodedUnits:
    """A plausible unit sequence: Mandarin phones with tones and flags, a break unit every few phones."""
    phones = [i for i, s in enumerate(inv.sy) if s.endswith("_c")]
    tones = [inv.index("tone")[t] for t in ("tone1", "tone2", "tone3", "tone4", "tone5")]
    emo = inv.index("emo_category")["emotion_neutral"]
    spk = inv.index("speaker")[speaker or inv.speakers[0]]
    ling = np.stack([rng.choice(phones, n), rng.choice(tones, n), rng.integers(0, 2, n), rng.integers(0, 3, n)], -1)
    for k in range(4, n, 5):
        ling[k] = [inv.index("sy")["@#1"], inv.index("tone")["tone_none"], inv.index("syllable_flag")["s_none"],
                   inv.index("word_segment")["word_none"]]
    return EncodedUnits(ling=ling.astype(np.int64), emotion=np.full(n, emo, np.int64), speaker=np.full(n, spk, np.int64))


def torch_reference(am: KanTtsSAMBERT, gen: Generator, units: EncodedUnits,
                    durations: np.ndarray | None = None) -> dict[str, Any]:
    with torch.no_grad():
        out = am(torch.from_numpy(units.ling)[None], torch.from_numpy(units.emotion)[None],
                 torch.from_numpy(units.speaker)[None], keep_attention=False,
                 durations=None if durations is None else torch.from_numpy(durations)[None])
        valid = int(out["LR_length_rounded"][0])
        mel = out["postnet_outputs"][0, :valid]
        wav = gen(mel.T[None])[0, 0] if valid else torch.zeros(0)
    logd = out["log_duration_predictions"][0].numpy()
    return {"mel": mel.numpy(), "wav": wav.numpy(), "reps": out["_durations_rounded"][0].numpy(),
            "d": (np.exp(logd) - np.float32(1.0)).astype(np.float32), "band": out["x_band_width"]}


def pipeline_gate(manifest: Manifest, voice: str, am: KanTtsSAMBERT, gen: Generator, unit_counts: tuple[int, ...],
                  seed: int = 0) -> tuple[list[GateCase], list[GateFailure]]:
    """Whole pipeline, torch vs the runtime's ONNX path, on unit counts never traced. Collects every
    failure (typed: duration flip, tolerance, shape) before returning.

    Every unit whose rounded duration flips is recorded (a failure unless it is a rounding-boundary
    case, see :func:`duration_flips`) and the rest is compared with torch's durations forced in.
    """
    from ..runtime.pipeline import OneShot

    rng = np.random.default_rng(seed + 7)
    vm = manifest.voice(voice)
    results: list[GateCase] = []
    comp = Comparator()
    with OneShot(manifest, voice, backend="cpu") as rt:
        for n in unit_counts:
            units = random_units(vm.inventories, n, rng)
            ref = torch_reference(am, gen, units)
            got = rt.run(units)
            case, note = f"{n}u", ""
            flips = duration_flips(ref["reps"], ref["d"], got.reps, got.durations)
            if flips:
                note = (f"rounded duration flipped at {len(flips)} unit(s) "
                        f"({sum(f.boundary for f in flips)} on a rounding boundary); compared with torch durations forced")
                comp.durations(case, f"{voice} durations", flips)
                got = rt.run(units, durations=ref["d"])
            comp.exact(case, f"{voice} attention", "x_band_width", got.band, ref["band"])
            mel_err = comp.allclose(case, f"{voice} mel", got.mel, ref["mel"], MEL_ATOL)
            wav_err = comp.allclose(case, f"{voice} wav", got.audio, ref["wav"], WAV_ATOL)
            results.append(GateCase(case, n, int(ref["mel"].shape[0]), mel_err, wav_err, note, tuple(flips)))
    return results, comp.failures
