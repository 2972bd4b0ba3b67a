"""The bundle manifest: what an exported voice is, read into typed structs (torch-free).

A bundle is a folder with ``manifest.json`` and one sub-folder per voice holding its ONNX graphs.
The runtime refuses a manifest whose schema version or model type it does not know, and checks that
every graph file it names exists and has the recorded sha256 (cheap insurance against a truncated copy).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..symbols import Inventories
from .records import (
    FAILED,
    HIGHER_IS_BETTER,
    METRIC_LABELS,
    METRIC_UNITS,
    NOT_RUN,
    PASSED,
    STATUSES,
    ClipScore,
    DurationFlip,
    DurationFlipFailure,
    GateCase,
    GateFailure,
    GateRecord,
    GraphProblem,
    QualityFailure,
    QualityRecord,
    RunFailure,
    ShapeMismatch,
    ToleranceExceeded,
    Verdict,
)
from .schema import Where, check_manifest, parsed

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MODEL_TYPE = "kantts-sambert-hifigan"
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# The gate records are part of the manifest's vocabulary: importable from here as they always were.
__all__ = ["MANIFEST", "MODEL_TYPE", "PRECISIONS", "SCHEMA_VERSION", "AcousticInfo", "GraphInfo", "Manifest",
           "TensorSpec", "Variant", "VocoderInfo", "VoiceManifest", "read_manifest", "voice_to_json",
           "write_manifest", "PASSED", "FAILED", "NOT_RUN", "STATUSES", "HIGHER_IS_BETTER", "METRIC_LABELS", "METRIC_UNITS", "DurationFlip", "GateFailure", "ShapeMismatch", "ToleranceExceeded", "DurationFlipFailure", "QualityFailure", "RunFailure", "GraphProblem", "GateCase", "GateRecord", "ClipScore", "Verdict", "QualityRecord"]


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
    # Why the variant's file cannot be used (missing, sha256 mismatch), found by read_manifest(verify=True);
    # empty when intact. Not written: the record stays as quantize wrote it until quantize replaces it.
    damage: str = ""

    @property
    def usable(self) -> bool:
        """Intact and passed its quality gate: the only variants the runtime ever runs."""
        return not self.damage and self.quality.passed

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision, "graph": {"name": self.graph.name, **self.graph.to_json()},
                "backends": list(self.backends), "quality": self.quality.to_json(), "recipe": self.recipe}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Variant:
        """A variant record (its shape checked by :func:`.schema.check_manifest` first)."""
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
    from ..utils import write_atomic

    path = root / MANIFEST
    # Flushed temp file, then a flushed rename: a reader, or a crash, never sees half a manifest.
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8"))
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
    check_manifest(d, root, path)  # every value's type and range, every path inside the bundle
    voices = {}
    for name, v in d["voices"].items():
        at = Where(path) / "voices" / name
        inv = parsed(at / "inventories", partial(Inventories.from_json, v["inventories"],
                                                 has_mask=v.get("has_mask", True)))
        gate = parsed(at / "gate", partial(GateRecord.from_json, v["gate"])) if v.get("gate") is not None else None
        variants = {p: parsed(at / "variants" / p, partial(Variant.from_json, x))
                    for p, x in v.get("variants", {}).items()}
        voices[name] = VoiceManifest(
            name=name, folder=v["folder"], acoustic=AcousticInfo(**v["acoustic"]), vocoder=VocoderInfo(**v["vocoder"]),
            inventories=inv, graphs={k: GraphInfo.from_json(k, g) for k, g in v["graphs"].items()},
            provenance=v.get("provenance", {}), gate=gate, variants=variants)
    m = Manifest(root=root, schema_version=d["schema_version"], model_type=d["model_type"],
                 sample_rate=d["sample_rate"], mel=d["mel"], voices=voices, default_voice=d["default_voice"],
                 provenance=d.get("provenance", {}))
    if verify:
        m = _verify_files(m, path)
    return m


def _verify_files(m: Manifest, path: Path) -> Manifest:
    """Every graph file present with its recorded sha256 (cheap insurance against a truncated copy). A
    damaged base graph refuses the bundle (re-export); a damaged vocoder variant disables that variant
    only, so every voice still opens in FP32 (an interrupted quantize must not brick the bundle)."""
    from ..utils import file_sha256

    voices = dict(m.voices)
    for name, v in m.voices.items():
        for g in v.graphs.values():
            gp = m.root / v.folder / g.file
            if not gp.is_file():
                raise BundleError(f"{gp} is missing from the bundle; re-export it")
            if file_sha256(gp) != g.sha256:
                raise BundleError(f"{gp} does not match its sha256 in {path} (truncated or modified); re-export it")
        damaged = {}
        for p, var in v.variants.items():
            gp = m.root / v.folder / var.graph.file
            problem = ("is missing" if not gp.is_file() else
                       "does not match its sha256 (truncated or modified)" if file_sha256(gp) != var.graph.sha256
                       else "")
            if problem:
                damaged[p] = replace(var, damage=f"{gp.name} {problem}; the {p} vocoder is disabled until you re-run: "
                                                 f"sambert-deploy quantize {m.root} --voice {name} --precision {p}")
                log.warning("voice %s: %s", name, damaged[p].damage)
        if damaged:
            voices[name] = replace(v, variants={**v.variants, **damaged})
    return replace(m, voices=voices)
