"""The bundle manifest: what an exported voice is, read into typed structs (torch-free).

A bundle is a folder with ``manifest.json`` and one sub-folder per voice holding its ONNX graphs.
The runtime refuses a manifest whose schema version or model type it does not know, and checks that
every graph file it names exists and has the recorded sha256 (cheap insurance against a truncated copy).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..symbols import Inventories

SCHEMA_VERSION = 1
MODEL_TYPE = "kantts-sambert-hifigan"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: name, ONNX element type name and axis names (str = symbolic, int = fixed)."""

    name: str
    dtype: str
    axes: tuple[str | int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "axes": list(self.axes)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["axes"]))


@dataclass(frozen=True)
class GraphInfo:
    name: str
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str = "fp32"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "precision": self.precision,
                "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> GraphInfo:
        return cls(name, d["file"], d["sha256"], tuple(TensorSpec.from_json(t) for t in d["inputs"]),
                   tuple(TensorSpec.from_json(t) for t in d["outputs"]), d.get("precision", "fp32"))


@dataclass(frozen=True)
class AcousticInfo:
    """Sizes the numpy glue between the acoustic graphs needs."""

    outputs_per_step: int
    num_mels: int
    embedding_dim: int
    projection_units: int
    d_mem: int
    dur_lstm_layers: int
    dur_lstm_units: int
    decoder_layers: int
    decoder_heads: int
    decoder_head_dim: int
    postnet_left: int
    postnet_right: int
    postnet_lstm_units: int
    postnet_memory_units: int
    band_rule: str = "int(max(d) / outputs_per_step + 0.5) on unrounded d = exp(logd) - 1"


@dataclass(frozen=True)
class VocoderInfo:
    causal: bool
    hop: int
    context_left: int
    context_right: int
    in_channels: int


@dataclass(frozen=True)
class DurationFlip:
    """A unit whose rounded duration differs between torch and ONNX Runtime in a gate case.

    ``boundary`` is true where both unrounded durations sit on a rounding boundary (x.5) and agree
    to float precision: that flip is noise, not an error.
    """

    unit: int
    torch_d: float
    onnx_d: float
    boundary: bool

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "torch_d": self.torch_d, "onnx_d": self.onnx_d, "boundary": self.boundary}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DurationFlip:
        return cls(int(d["unit"]), float(d["torch_d"]), float(d["onnx_d"]), bool(d["boundary"]))


@dataclass(frozen=True)
class GateCase:
    """One whole-pipeline parity case: torch vs the runtime on ``units`` random units never traced."""

    case: str
    units: int
    frames: int
    mel_err: float  # max-abs over the mel [frames, num_mels]
    wav_err: float  # max-abs over the waveform [samples]
    note: str = ""
    flips: tuple[DurationFlip, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "units": self.units, "frames": self.frames, "mel_err": self.mel_err,
                "wav_err": self.wav_err, "note": self.note, "flips": [f.to_json() for f in self.flips]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GateCase:
        return cls(str(d["case"]), int(d["units"]), int(d["frames"]), float(d["mel_err"]), float(d["wav_err"]),
                   str(d.get("note", "")), tuple(DurationFlip.from_json(f) for f in d.get("flips", [])))


@dataclass(frozen=True)
class GateRecord:
    """What the export-time parity gate checked for one voice.

    ``checked`` is false for ``export --no-check``; then ``passed`` is None and there are no cases.
    A bundle whose gate failed is never written, so a checked record on disk has ``passed`` true.
    """

    checked: bool
    passed: bool | None = None
    cases: tuple[GateCase, ...] = ()
    tolerances: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        if not self.checked:
            return {"checked": False}
        return {"checked": True, "passed": self.passed, "cases": [c.to_json() for c in self.cases],
                "tolerances": self.tolerances}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GateRecord:
        if not d.get("checked"):
            return cls(False)
        return cls(True, bool(d["passed"]), tuple(GateCase.from_json(c) for c in d.get("cases", [])),
                   dict(d.get("tolerances", {})))


PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class QualityRecord:
    """How a reduced-precision variant compared with the FP32 graph it was made from.

    ``metrics`` are measured on this voice's own mels (its acoustic model over a text corpus):
    ``logmel_l1`` (nats, mean |log mel(variant) - log mel(fp32)|), ``logmel_l1_quiet`` (quietest 20%
    of frames), ``pesq_vs_fp32`` (PESQ-wb; absent where PESQ finds no speech, e.g. random weights)
    and ``snr_db``. ``reference`` is the same recipe judged on a real pretrained vocoder with real
    speech (``sambert_deploy.quality``), absent where that harness was not installed. ``passed``
    is every threshold of both; ``failures`` says which were not met.
    """

    passed: bool
    metrics: dict[str, float]
    thresholds: dict[str, float]
    failures: tuple[str, ...] = ()
    data: str = ""
    reference: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "metrics": self.metrics, "thresholds": self.thresholds,
                "failures": list(self.failures), "data": self.data, "reference": self.reference}

    def summary(self) -> str:
        """One line: the metrics, the real-vocoder check and the verdict (``info``, ``quantize``)."""
        m, nan = self.metrics, float("nan")
        parts = [f"log-mel L1 {m['logmel_l1']:.3f} nats (quiet {m.get('logmel_l1_quiet', nan):.3f})"]
        if "pesq_vs_fp32" in m:
            parts.append(f"PESQ vs fp32 {m['pesq_vs_fp32']:.2f}")
        parts.append(f"SNR {m.get('snr_db', nan):.1f} dB")
        ref = self.reference
        if ref:
            parts.append(f"real vocoder: log-mel L1 {ref.get('logmel_l1', nan):.3f}, PESQ vs recording "
                         f"{ref.get('pesq_vs_recording', nan):.2f} (fp32 {ref.get('fp32_pesq_vs_recording', nan):.2f})")
        else:
            parts.append("real vocoder: not checked")
        verdict = "gate passed" if self.passed else "gate FAILED: " + "; ".join(self.failures)
        return ", ".join(parts) + f"; {verdict}"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QualityRecord:
        return cls(bool(d["passed"]), {k: float(v) for k, v in d["metrics"].items()},
                   {k: float(v) for k, v in d["thresholds"].items()}, tuple(d.get("failures", ())),
                   str(d.get("data", "")), d.get("reference"))


@dataclass(frozen=True)
class Variant:
    """A reduced-precision form of one graph (the vocoder: 60-84% of the CPU time).

    ``graph.file`` is the variant's own ONNX (``vocoder.fp16.onnx``, ``vocoder.int8.onnx``) or, for
    ``bf16``, the FP32 graph itself: BF16 is an inference precision the backend applies (OpenVINO's
    hint), not a graph. ``backends`` are those that run it; ``recipe`` how it was made.
    """

    precision: str
    graph: GraphInfo
    backends: tuple[str, ...]
    quality: QualityRecord
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision, "graph": {"name": self.graph.name, **self.graph.to_json()},
                "backends": list(self.backends), "quality": self.quality.to_json(), "recipe": self.recipe}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Variant:
        g = d["graph"]
        return cls(str(d["precision"]), GraphInfo.from_json(g["name"], g), tuple(d["backends"]),
                   QualityRecord.from_json(d["quality"]), dict(d.get("recipe", {})))


@dataclass(frozen=True)
class VoiceManifest:
    name: str
    folder: str
    acoustic: AcousticInfo
    vocoder: VocoderInfo
    inventories: Inventories
    graphs: dict[str, GraphInfo]
    provenance: dict[str, Any] = field(default_factory=dict)
    gate: GateRecord | None = None  # None: exported before the gate was recorded
    variants: dict[str, Variant] = field(default_factory=dict)  # precision -> vocoder variant (sambert-deploy quantize)

    @property
    def speakers(self) -> tuple[str, ...]:
        return self.inventories.speakers

    @property
    def emotions(self) -> tuple[str, ...]:
        return self.inventories.emotions


@dataclass(frozen=True)
class Manifest:
    root: Path
    schema_version: int
    model_type: str
    sample_rate: int
    mel: dict[str, Any]
    voices: dict[str, VoiceManifest]
    default_voice: str
    provenance: dict[str, Any]

    def voice(self, name: str | None) -> VoiceManifest:
        key = name or self.default_voice
        if key not in self.voices:
            raise BundleError(f"unknown voice '{key}'; this bundle has: {', '.join(self.voices)}")
        return self.voices[key]

    def graph_path(self, voice: VoiceManifest, graph: str) -> Path:
        return self.root / voice.folder / voice.graphs[graph].file


def voice_to_json(v: VoiceManifest) -> dict[str, Any]:
    from dataclasses import asdict

    d = {"folder": v.folder, "acoustic": asdict(v.acoustic), "vocoder": asdict(v.vocoder),
         "inventories": v.inventories.to_json(), "has_mask": v.inventories.has_mask,
         "speakers": list(v.speakers), "emotions": list(v.emotions),
         "graphs": {k: g.to_json() for k, g in v.graphs.items()}, "provenance": v.provenance}
    if v.gate is not None:
        d["gate"] = v.gate.to_json()
    if v.variants:
        d["variants"] = {p: var.to_json() for p, var in v.variants.items()}
    return d


def write_manifest(root: Path, sample_rate: int, mel: dict[str, Any], voices: list[VoiceManifest],
                   provenance: dict[str, Any]) -> Path:
    data = {"schema_version": SCHEMA_VERSION, "model_type": MODEL_TYPE, "sample_rate": sample_rate, "mel": mel,
            "default_voice": voices[0].name, "voices": {v.name: voice_to_json(v) for v in voices},
            "provenance": provenance}
    path = root / MANIFEST
    # Temp file, then a rename: a reader (or a crash) never sees half a manifest.
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), "utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(bundle: str | Path, verify: bool = True) -> Manifest:
    """Read and validate ``BUNDLE/manifest.json`` (``verify`` also checks graph files and hashes)."""
    root = Path(bundle)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle directory; create one with: sambert-deploy export MODEL_DIR -o {root}")
    if not path.is_file():
        raise BundleError(f"{path} is missing; {root} is not an exported bundle (run sambert-deploy export)")
    try:
        d = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is corrupted ({e}); re-export the bundle") from None
    if not isinstance(d, dict):
        raise BundleError(f"{path} is corrupted (not a JSON object); re-export the bundle")
    if d.get("model_type") != MODEL_TYPE:
        raise BundleError(f"{path}: model_type '{d.get('model_type')}' is not '{MODEL_TYPE}'; this runtime cannot run it")
    if d.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version {d.get('schema_version')} is not supported (this runtime reads "
                          f"{SCHEMA_VERSION}); re-export the bundle with this version of sambert-deploy")
    try:
        voices = {}
        for name, v in d["voices"].items():
            inv = Inventories.from_json(v["inventories"], has_mask=v.get("has_mask", True))
            voices[name] = VoiceManifest(
                name=name, folder=v["folder"], acoustic=AcousticInfo(**v["acoustic"]),
                vocoder=VocoderInfo(**v["vocoder"]), inventories=inv,
                graphs={k: GraphInfo.from_json(k, g) for k, g in v["graphs"].items()},
                provenance=v.get("provenance", {}),
                gate=GateRecord.from_json(v["gate"]) if v.get("gate") is not None else None,
                variants={p: Variant.from_json(x) for p, x in v.get("variants", {}).items()})
        m = Manifest(root=root, schema_version=d["schema_version"], model_type=d["model_type"],
                     sample_rate=int(d["sample_rate"]), mel=d["mel"], voices=voices,
                     default_voice=d["default_voice"], provenance=d.get("provenance", {}))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{path} is corrupted or incomplete ({type(e).__name__}: {e}); re-export the bundle") from None
    if verify:
        from ..utils import file_sha256

        for v in voices.values():
            for g in (*v.graphs.values(), *(var.graph for var in v.variants.values())):
                gp = root / v.folder / g.file
                if not gp.is_file():
                    raise BundleError(f"{gp} is missing from the bundle; re-export it")
                if file_sha256(gp) != g.sha256:
                    raise BundleError(f"{gp} does not match its sha256 in {path} (truncated or modified); re-export it")
    return m
