"""A TensorRT engine's files and what it must match, as data (no TensorRT needed): where a voice's
engines live, the sidecar each carries (``<engine>.json``), and the check made before one is
deserialized.

An engine only runs where it was built: the same TensorRT version, the same GPU model (compute
capability), the precision and ONNX graph it was made from, and a shape profile that covers the
windows the runtime will feed. Each of those is a field of the sidecar; a mismatch is an
:class:`~sambert_deploy.errors.EngineMismatchError` naming the field and the rebuild command, never a
TensorRT deserialization failure deep in a stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import BundleError, EngineMismatchError

ENGINES_DIR = "engines"
SIDECAR_FORMAT = 1


def engine_path(root: str | Path, voice: str, onnx_file: str) -> Path:
    """``BUNDLE/engines/<voice>/<graph file stem>.plan``: one engine per graph and precision
    (``vocoder.plan``, ``vocoder.fp16.plan``, ``vocoder.int8.plan``).

    A variant quantized again over a live one is written as ``vocoder.int8.<sha16>.onnx`` (quantize's
    transaction); its engine keeps the precision's name, so the engine built from the old file is
    found and refused by its sidecar (naming the rebuild), never silently passed over."""
    stem = Path(onnx_file).stem
    head, _, tail = stem.rpartition(".")
    if head.count(".") >= 1 and len(tail) == 16 and all(c in "0123456789abcdef" for c in tail):
        stem = head
    return Path(root) / ENGINES_DIR / voice / (stem + ".plan")


def sidecar_path(engine: Path) -> Path:
    return engine.with_suffix(".json")


def rebuild_command(voice: str, precision: str) -> str:
    return f"sambert-deploy engines BUNDLE --voice {voice} --precision {precision}"


@dataclass(frozen=True)
class ShapeRange:
    """One input's optimization profile: the smallest, tuned-for and largest shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def covers(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max,
                                                                                      strict=True))


@dataclass(frozen=True)
class Sidecar:
    """What an engine was built from and for; written next to it by ``sambert-deploy engines``."""

    voice: str
    graph: str
    precision: str
    onnx: str  # the graph file, relative to the voice folder
    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    profiles: dict[str, ShapeRange]
    builder: dict[str, Any] = field(default_factory=dict)
    format: int = SIDECAR_FORMAT

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["profiles"] = {k: {"min": list(v.min), "opt": list(v.opt), "max": list(v.max)} for k, v in self.profiles.items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Sidecar:
        profiles = {k: ShapeRange(tuple(v["min"]), tuple(v["opt"]), tuple(v["max"])) for k, v in d["profiles"].items()}
        return cls(str(d["voice"]), str(d["graph"]), str(d["precision"]), str(d["onnx"]), str(d["onnx_sha256"]),
                   str(d["tensorrt"]), str(d["gpu"]), str(d["compute_capability"]), profiles,
                   dict(d.get("builder", {})), int(d.get("format", SIDECAR_FORMAT)))

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)


def read_sidecar(engine: Path) -> Sidecar:
    path = sidecar_path(engine)
    if not engine.is_file() or not path.is_file():
        raise BundleError(f"no TensorRT engine at {engine}; build it: sambert-deploy engines BUNDLE")
    try:
        return Sidecar.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{path} is not a readable engine sidecar ({type(e).__name__}: {e}); rebuild the engine: "
                          "sambert-deploy engines BUNDLE") from None


@dataclass(frozen=True)
class Host:
    """Where an engine would run: the installed TensorRT and the GPU."""

    tensorrt: str
    gpu: str
    compute_capability: str


@dataclass(frozen=True)
class EngineTarget:
    """What the runtime needs of an engine: the precision and ONNX graph it chose, and the shapes of
    each input it will feed."""

    precision: str
    onnx_sha256: str
    shapes: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)  # input -> shapes fed


def check_sidecar(sc: Sidecar, want: EngineTarget, here: Host, engine: Path) -> None:
    """Refuse an engine built for something else, naming the field and the rebuild command."""
    fix = rebuild_command(sc.voice, want.precision)
    if sc.format != SIDECAR_FORMAT:
        raise EngineMismatchError(f"{engine.name}: sidecar format {sc.format}, this runtime reads {SIDECAR_FORMAT}; "
                                  f"rebuild it: {fix}")
    checks = (("TensorRT version", sc.tensorrt, here.tensorrt), ("GPU compute capability", sc.compute_capability,
                                                                 here.compute_capability),
              ("GPU", sc.gpu, here.gpu), ("precision", sc.precision, want.precision),
              ("ONNX graph sha256", sc.onnx_sha256[:12], want.onnx_sha256[:12]))
    for what, built, now in checks:
        if built != now:
            raise EngineMismatchError(f"{engine.name} was built for {what} {built}, but here it is {now}; "
                                      f"rebuild it: {fix}")
    for name, shapes in want.shapes.items():
        rng = sc.profiles.get(name)
        if rng is None:
            raise EngineMismatchError(f"{engine.name} has no profile for input '{name}'; rebuild it: {fix}")
        for shape in shapes:
            if not rng.covers(shape):
                raise EngineMismatchError(f"{engine.name}'s profile for '{name}' covers {list(rng.min)}..{list(rng.max)}"
                                          f", but the runtime feeds {list(shape)} (a larger vocoder chunk?); rebuild it "
                                          f"for that chunk: {fix} --chunk CHUNK")
