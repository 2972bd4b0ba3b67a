"""Which precision of the vocoder a voice runs, and on which backend (torch-free).

A bundle's FP32 graphs always exist; ``sambert-deploy quantize`` adds reduced-precision variants of
the vocoder, each with the quality record of its gate (:class:`~.manifest.Variant`). ``auto`` takes
the fastest variant that passed its gate and that the vocoder's backend runs, in the order measured
by ``scripts/benchmark.py`` (README, "Precision"); an explicit precision that cannot be honoured is
a :class:`PrecisionError` naming the fix, never a silent FP32 fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import PrecisionError
from .manifest import PRECISIONS, GraphInfo, Variant, VoiceManifest

log = logging.getLogger(__name__)

# Fastest first, per vocoder backend (scripts/benchmark.py --precisions, 2-core AVX512 CPU; README).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("fp16", "fp32"),
    "openvino": ("bf16", "int8", "fp32"),
    "cpu": ("int8", "fp32"),
}


@dataclass(frozen=True)
class VocoderChoice:
    """The vocoder graph a voice runs: its precision, file, backend and the backend's precision hint."""

    precision: str
    graph: GraphInfo
    backend: str
    hint: str | None  # OpenVINO's INFERENCE_PRECISION_HINT; None on ONNX Runtime
    variant: Variant | None  # None for the FP32 graph


def check_precision(requested: str) -> str:
    if requested != "auto" and requested not in PRECISIONS:
        raise PrecisionError(f"precision '{requested}' is unknown; choose one of auto, {', '.join(PRECISIONS)}")
    return requested


def choose_vocoder(voice: VoiceManifest, requested: str, backend: str, backend_given: bool,
                   available: list[str]) -> VocoderChoice:
    """Resolve ``requested`` (``auto`` or a precision) for ``voice``'s vocoder.

    ``backend`` is the vocoder backend selected so far; ``backend_given`` says whether the user named
    it (then a variant that needs another backend is an error) or ``auto`` chose it (then the variant's
    backend may be taken if it is present). ``available`` lists the backends present here.
    """
    check_precision(requested)
    fp32 = VocoderChoice("fp32", voice.graphs["vocoder"], backend, "f32" if backend == "openvino" else None, None)
    if requested == "fp32":
        return fp32
    if requested == "auto":
        for p in AUTO_ORDER.get(backend, ("fp32",)):
            if p == "fp32":
                if backend == "openvino" and not backend_given and "cpu" in available:
                    # OpenVINO's FP32 vocoder is no faster than ONNX Runtime's on single-threaded calls
                    # (613-651 vs 616-700 ms a 291-frame window) and compiles each new window length.
                    return VocoderChoice("fp32", voice.graphs["vocoder"], "cpu", None, None)
                return fp32
            var = voice.variants.get(p)
            if var is not None and var.quality.passed and backend in var.backends:
                return _choice(var, backend)
        return fp32
    var = voice.variants.get(requested)
    if var is None:
        built = ", ".join(voice.variants) or "none"
        raise PrecisionError(f"voice '{voice.name}' has no {requested} vocoder (variants built: {built}); build it "
                             f"with: sambert-deploy quantize BUNDLE --precision {requested}")
    if not var.quality.passed:
        why = "; ".join(var.quality.failures) or "see sambert-deploy info"
        raise PrecisionError(f"voice '{voice.name}': the {requested} vocoder failed its quality gate ({why}); use "
                             "another precision (sambert-deploy info lists the ones that passed)")
    if backend in var.backends:
        return _choice(var, backend)
    usable = [b for b in var.backends if b in available]
    if backend_given or not usable:
        need = " or ".join(var.backends)
        fix = ("install it: pip install 'sambert-deploy[openvino]'" if "openvino" in var.backends
               and "openvino" not in available else f"choose --voc-backend {var.backends[0]}")
        raise PrecisionError(f"the {requested} vocoder runs on {need}, not on {backend}; {fix}")
    log.info("voice %s: %s vocoder needs %s, not %s", voice.name, requested, usable[0], backend)
    return _choice(var, usable[0])


def _choice(var: Variant, backend: str) -> VocoderChoice:
    hint = None
    if backend == "openvino":
        hint = "bf16" if var.precision == "bf16" else "f32"
    return VocoderChoice(var.precision, var.graph, backend, hint, var)
