"""Which precision of the vocoder a voice runs, and on which backend (torch-free).

A bundle's FP32 graphs always exist; ``sambert-deploy quantize`` adds reduced-precision variants of
the vocoder, each with the quality record of its gate (:class:`~.manifest.Variant`). ``auto`` takes
the fastest variant that passed its gate, on the fastest backend present that runs it (a backend the
user named is kept), in the order measured by ``scripts/benchmark.py`` (:data:`AUTO_ORDER`); an
explicit precision that cannot be honoured is a :class:`PrecisionError` naming the fix, never a
silent FP32 fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailableError, PrecisionError
from .backends import engine_path
from .manifest import PRECISIONS, GraphInfo, Variant, VoiceManifest

log = logging.getLogger(__name__)

# Fastest first: (precision, backend) for a vocoder whose backend ``auto`` chose, by where that choice
# landed (scripts/benchmark.py, 2-core AVX512-BF16 CPU without AMX, README "Measured"): ONNX Runtime's
# INT8 vocoder streams as fast as OpenVINO's BF16 (RTF 0.106-0.115 vs 0.107-0.122 from 300 to 3,000
# units) in half the memory (peak RSS 474-479 MB vs 815-1,002 MB), so it goes first.
AUTO_ORDER: dict[str, tuple[tuple[str, str], ...]] = {
    # INT8 engines are built on request only: on a GPU the vocoder's FP16 convolutions are not the
    # bottleneck that justifies INT8's quality cost (unmeasured here: no GPU; scripts/gpu_run.sh).
    "tensorrt": (("fp16", "tensorrt"), ("fp32", "tensorrt")),
    "cuda": (("fp16", "cuda"), ("fp32", "cuda")),
    "openvino": (("int8", "cpu"), ("bf16", "openvino"), ("int8", "openvino"), ("fp32", "cpu")),
    "cpu": (("int8", "cpu"), ("bf16", "openvino"), ("int8", "openvino"), ("fp32", "cpu")),
}
# A CPU with AMX-BF16 (Xeon Sapphire Rapids and later) runs OpenVINO's BF16 vocoder on its tile units:
# 4.6-6.2x FP32 reported there, against 1.75x on the AVX512-BF16 CPU measured above, far past what INT8
# gains on either; so BF16 goes first there (not measured here: no AMX CPU, README "Measured").
AMX_ORDER = (("bf16", "openvino"), ("int8", "cpu"), ("int8", "openvino"), ("fp32", "cpu"))
AMX_FLAG = "amx_bf16"


def auto_order(backend: str, cpu_features: frozenset[str] = frozenset()) -> tuple[tuple[str, str], ...]:
    """``auto``'s (precision, backend) pairs, fastest first, for a vocoder whose backend ``auto`` chose:
    :data:`AUTO_ORDER`, or :data:`AMX_ORDER` on a CPU whose ``cpu_features`` (``cpu_flags()``) have AMX-BF16."""
    if backend in ("cpu", "openvino") and AMX_FLAG in cpu_features:
        return AMX_ORDER
    return AUTO_ORDER.get(backend, (("fp32", backend),))


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
                   available: list[str], cpu_features: frozenset[str] = frozenset()) -> VocoderChoice:
    """Resolve ``requested`` (``auto`` or a precision) for ``voice``'s vocoder.

    ``backend`` is the vocoder backend selected so far; ``backend_given`` says whether the user named
    it (then a variant that needs another backend is an error) or ``auto`` chose it (then the variant's
    backend may be taken if it is present). ``available`` lists the backends present here;
    ``cpu_features`` the CPU's flags, which reorder ``auto`` on AMX CPUs (:func:`auto_order`).
    """
    check_precision(requested)
    fp32 = VocoderChoice("fp32", voice.graphs["vocoder"], backend, precision_hint("fp32", backend), None)
    if requested == "fp32":
        return fp32
    if requested == "auto":
        # A backend the user named is kept; one that auto chose may give way to a faster pair.
        order = [(p, b) for p, b in auto_order(backend, cpu_features)
                 if (b == backend if backend_given else b in available)]
        for p, b in order:
            if p == "fp32":
                return VocoderChoice("fp32", voice.graphs["vocoder"], b, precision_hint("fp32", b), None)
            var = voice.variants.get(p)
            if var is not None and var.usable and b in var.backends:
                return _choice(var, b)
        return fp32
    var = passed_variant(voice, requested)
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


def passed_variant(voice: VoiceManifest, precision: str) -> Variant:
    """The voice's ``precision`` variant, or a :class:`PrecisionError` saying it is missing or failed."""
    var = voice.variants.get(precision)
    if var is None:
        built = ", ".join(voice.variants) or "none"
        raise PrecisionError(f"voice '{voice.name}' has no {precision} vocoder (variants built: {built}); build it "
                             f"with: sambert-deploy quantize BUNDLE --precision {precision}")
    if var.damage:
        raise PrecisionError(f"voice '{voice.name}': {var.damage}")
    if not var.quality.passed:
        why = "; ".join(var.quality.reasons()) or "see sambert-deploy info"
        raise PrecisionError(f"voice '{voice.name}': the {precision} vocoder failed its quality gate ({why}); use "
                             "another precision (sambert-deploy info lists the ones that passed)")
    return var


def choose_engine(voice: VoiceManifest, requested: str, root: Path) -> VocoderChoice:
    """The TensorRT engine a voice's vocoder runs: ``auto`` takes the first built of :data:`AUTO_ORDER`'s
    ``tensorrt`` row (its variant having passed its gate), a named precision that one. A missing engine
    is :class:`BackendUnavailableError` (the runtime falls back to the next backend, logged); a
    precision that cannot exist is a :class:`PrecisionError`."""
    check_precision(requested)
    order = [p for p, _ in AUTO_ORDER["tensorrt"]] if requested == "auto" else [requested]
    tried = []
    for p in order:
        if p == "bf16":
            raise PrecisionError("bf16 is an OpenVINO inference hint on the FP32 graph; a TensorRT engine takes its "
                                 "precision from the ONNX (strongly typed): use --precision fp16")
        var: Variant | None = None
        if p == "fp32":
            graph = voice.graphs["vocoder"]
        else:
            if requested == "auto" and not (p in voice.variants and voice.variants[p].usable):
                continue
            var = passed_variant(voice, p)
            graph = var.graph
        if engine_path(root, voice.name, graph.file).is_file():
            return VocoderChoice(p, graph, "tensorrt", None, var)
        tried.append(p)
    raise BackendUnavailableError(f"voice '{voice.name}' has no TensorRT engine ({' or '.join(tried)}); build it: "
                                  f"sambert-deploy engines BUNDLE --voice {voice.name} --precision {tried[0]}")


def precision_hint(precision: str, backend: str) -> str | None:
    """OpenVINO's inference precision for a vocoder of ``precision``: BF16 is the hint itself, every
    other graph runs as written (f32). None on ONNX Runtime, which computes in the graph's types."""
    if backend != "openvino":
        return None
    return "bf16" if precision == "bf16" else "f32"


def _choice(var: Variant, backend: str) -> VocoderChoice:
    return VocoderChoice(var.precision, var.graph, backend, precision_hint(var.precision, backend), var)
