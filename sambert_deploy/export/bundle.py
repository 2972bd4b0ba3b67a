"""``sambert-deploy export``: model directory -> bundle (ONNX graphs + manifest), then the parity gate."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import ExportError, ExportValidationError
from ..models.hifigan import Generator, receptive_field
from ..models.loading import VoiceFiles, list_voices, load_hifigan, load_sambert, read_yaml, voice_files
from ..models.sambert import KanTtsSAMBERT
from ..runtime.manifest import (
    AcousticInfo,
    GraphInfo,
    Manifest,
    VocoderInfo,
    VoiceManifest,
    read_manifest,
    write_manifest,
)
from ..symbols import EncodedUnits, Inventories
from ..utils import file_sha256
from .exporter import audit_graph, check_graph_parity, export_graph, require_export_extra
from .graphs import GRAPHS

log = logging.getLogger(__name__)

GATE_UNITS = (1, 2, 37, 811)  # lengths never traced: one unit, two, an odd size, > max_len (800)
MEL_ATOL = 1e-4
WAV_ATOL = 1e-4


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
    gate: list[dict[str, Any]] = field(default_factory=list)


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
                lines.append(f"    {g['case']}: units {g['units']}, frames {g['frames']}, mel max-abs {g['mel_err']:.2e}, "
                             f"wav max-abs {g['wav_err']:.2e}" + (f", {g['note']}" if g.get("note") else ""))
        return "\n".join(lines)


def prepare_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory; choose another -o path")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(f"output {out} exists and is not empty; pass --force to overwrite it or choose another -o")
        if not (out / "manifest.json").is_file():
            raise ExportError(f"output {out} is not empty and is not a bundle; refusing to overwrite it even with "
                              "--force: choose an empty or new -o path")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ExportError(f"output {out} is not writable ({e.strerror}); choose a writable -o path") from None


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
    failures: list[str] = []
    for spec in GRAPHS:
        model = am if spec.part == "am" else gen
        path = out / folder / f"{spec.name}.onnx"
        export_graph(spec, model, path, meta, options.opset, options.seed)
        failures += audit_graph(spec, path)
        if options.check:
            failures += check_graph_parity(spec, model, path)
        graphs[spec.name] = GraphInfo(spec.name, path.name, file_sha256(path), spec.inputs, spec.outputs)
    if failures:
        raise ExportValidationError(failures)
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
    else:
        assert model_dir is not None
        names = list_voices(model_dir)
        chosen = names if all_voices else (voices or names[:1])
        files = [voice_files(model_dir, v) for v in chosen]
        sample_rate = files[0].sample_rate
    out = Path(out)
    prepare_output(out, options.force)
    vms: list[VoiceManifest] = []
    reports: list[VoiceReport] = []
    models: dict[str, tuple[KanTtsSAMBERT, Generator]] = {}
    mel_info: dict[str, Any] = {}
    for vf in files:
        vm, rep, am, gen = export_voice(vf, out, options)
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
    write_manifest(out, sample_rate, mel_info, vms, provenance)
    if options.check:
        manifest = read_manifest(out)
        failures: list[str] = []
        for rep in reports:
            g0 = time.perf_counter()
            am, gen = models[rep.name]
            rep.gate, f = pipeline_gate(manifest, rep.name, am, gen, options.gate_units, options.seed)
            failures += f
            rep.seconds_gate = time.perf_counter() - g0
        if failures:
            raise ExportValidationError(failures)
    return ExportReport(out, reports, time.perf_counter() - t0)


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
                  seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """Whole pipeline, torch vs the runtime's ONNX path, on unit counts never traced. Collects failures.

    Where a float difference flips a rounded duration, that is reported as such and the rest is
    compared with torch's durations forced into the runtime.
    """
    from ..runtime.pipeline import OneShot

    rng = np.random.default_rng(seed + 7)
    vm = manifest.voice(voice)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    with OneShot(manifest, voice, backend="cpu") as rt:
        for n in unit_counts:
            units = random_units(vm.inventories, n, rng)
            ref = torch_reference(am, gen, units)
            got = rt.run(units)
            note = ""
            if not np.array_equal(got.reps, ref["reps"]):
                k = int(np.flatnonzero(got.reps != ref["reps"])[0])
                note = (f"rounded duration flipped at unit {k} (torch d={ref['d'][k]:.6f}, onnx d={got.durations[k]:.6f}); "
                        "compared with torch durations forced")
                if abs(float(ref["d"][k]) % 1 - 0.5) > 1e-3:  # not a rounding-boundary case: a real error
                    failures.append(f"{voice} {n} units: {note}")
                got = rt.run(units, durations=ref["d"])
            if got.band != ref["band"]:
                failures.append(f"{voice} {n} units: band width {got.band} != torch {ref['band']}")
            case = {"case": f"{n}u", "units": n, "frames": int(ref["mel"].shape[0]), "note": note,
                    "mel_err": _maxabs(got.mel, ref["mel"]), "wav_err": _maxabs(got.audio, ref["wav"])}
            results.append(case)
            if got.mel.shape != ref["mel"].shape or case["mel_err"] > MEL_ATOL:
                failures.append(f"{voice} {n} units: mel {got.mel.shape} vs {ref['mel'].shape}, max-abs {case['mel_err']:.3g}")
            if got.audio.shape != ref["wav"].shape or case["wav_err"] > WAV_ATOL:
                failures.append(f"{voice} {n} units: wav {got.audio.shape} vs {ref['wav'].shape}, "
                                f"max-abs {case['wav_err']:.3g}")
    return results, failures


def _maxabs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max()) if a.size else 0.0
