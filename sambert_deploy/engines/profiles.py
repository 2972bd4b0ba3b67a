"""TensorRT optimization profiles derived from the bundle's graph specs and the runtime's chunk sizes.

A graph's inputs declare their axes (``GraphInfo.inputs``: a fixed size, or a symbolic name such as
``num_frames``). Each symbolic name gets a range from the voice and the stream options: the vocoder's
``num_frames`` runs from 1 (the last rows of a short sentence) to the regular window (chunk plus
receptive-field context), tuned (``opt``) at that window, which is what a stream feeds nearly always.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InvalidInputError
from ..runtime.backends import ShapeRange
from ..runtime.gpu_plan import TIERS
from ..runtime.manifest import GraphInfo, VoiceManifest
from ..runtime.synthesizer import StreamOptions, window_frames


@dataclass(frozen=True)
class AxisRange:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InvalidInputError(f"axis range must satisfy 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


def vocoder_axes(voice: VoiceManifest, options: StreamOptions, max_frames: int | None = None) -> dict[str, AxisRange]:
    """Ranges of the vocoder's symbolic axes: tuned for ``options``' window, covering every memory tier's
    window too (the runtime's tier depends on the memory free when it starts, not when the engine was
    built). ``max_frames`` raises the largest window further (whole utterances: ``OneShot``)."""
    window = window_frames(voice, options)
    if max_frames is not None and max_frames < 1:
        raise InvalidInputError(f"--max-frames must be >= 1, got {max_frames}", param="max_frames")
    largest_tier = window_frames(voice, StreamOptions(vocoder_chunk=max(t.vocoder_chunk for t in TIERS)))
    mels = voice.vocoder.in_channels
    # One window per call: the runtime batches vocoder windows on ONNX Runtime only (runtime/vocoder.py).
    return {"batch": AxisRange(1, 1, 1), "num_mels": AxisRange(mels, mels, mels),
            "num_frames": AxisRange(1, window, max(window, largest_tier, max_frames or 0))}


def derive_profile(graph: GraphInfo, axes: Mapping[str, AxisRange]) -> dict[str, ShapeRange]:
    """One profile: each input's (min, opt, max) shape from its declared axes."""
    out = {}
    for spec in graph.inputs:
        lo, opt, hi = [], [], []
        for i, axis in enumerate(spec.axes):
            if isinstance(axis, int):
                lo.append(axis)
                opt.append(axis)
                hi.append(axis)
                continue
            rng = axes.get(axis)
            if rng is None:
                raise InvalidInputError(f"graph '{graph.name}' input '{spec.name}' axis {i} ('{axis}') has no range "
                                        f"for a TensorRT profile; known axes: {', '.join(sorted(axes)) or 'none'}")
            lo.append(rng.min)
            opt.append(rng.opt)
            hi.append(rng.max)
        out[spec.name] = ShapeRange(tuple(lo), tuple(opt), tuple(hi))
    return out
