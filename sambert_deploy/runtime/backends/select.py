"""Which backend runs a pipeline stage: what this machine lists, ``auto``'s order per stage with each
fallback logged and its reason, ``strict`` raising instead, and making a backend of a kind."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from ...errors import BackendUnavailableError, BundleError, InvalidInputError, MissingExtraError
from .base import Backend, BackendOptions
from .openvino import OpenVinoBackend, import_openvino, openvino_missing
from .ort import OrtBackend, OrtCudaBackend
from .tensorrt import tensorrt_missing

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "cuda", "openvino", "cpu")
# ``auto``, best first, per pipeline stage. OpenVINO runs the vocoder's convolutions faster than ORT
# (291 frames, AVX512_BF16 CPU: 1.8x with bf16 on one thread, 1.6x in f32 on two; even in f32 on one),
# but the acoustic model's decoder step is faster in ORT (~1 ms a call against ~3 ms: per-call overhead).
# TensorRT runs only the vocoder (its engines are built per window profile; the acoustic model's
# per-step decoder is launch-bound and stays on the CUDA EP with its key/value window on the device).
AUTO_ORDER = {"am": ("cuda", "cpu"), "vocoder": ("tensorrt", "cuda", "openvino", "cpu")}
_PASSED_OVER = ("backend ", " not used: ")  # how choose_backend's notes of a backend passed over read


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def available_backends() -> list[str]:
    """Backends usable here, best first."""
    found = []
    provs = _ort_providers()
    if tensorrt_missing() is None:
        found.append("tensorrt")
    if "CUDAExecutionProvider" in provs:
        found.append("cuda")
    if openvino_missing() is None:
        found.append("openvino")
    found.append("cpu")
    return found


def unavailable_reason(kind: str) -> str:
    """Why backend ``kind`` is not listed here, and how to get it."""
    if kind == "tensorrt":
        return tensorrt_missing() or "TensorRT failed to start"
    if kind == "cuda":
        return ("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a machine with an "
                "NVIDIA GPU: pip uninstall onnxruntime && pip install onnxruntime-gpu)")
    if kind == "openvino":
        return openvino_missing() or "openvino failed to start"
    return f"unknown backend '{kind}'; choose one of {', '.join(BACKENDS)}"


def select_backend(requested: str = "auto", strict: bool = False, stage: str = "am",
                   exclude: frozenset[str] = frozenset()) -> str:
    """Resolve ``auto``/a named backend to one that is present here for ``stage`` (``am`` or ``vocoder``),
    logging each fallback and its reason (:func:`choose_backend` on this machine's backends)."""
    present = available_backends()
    missing = {b: unavailable_reason(b) for b in BACKENDS if b not in present and b != "auto"}
    kind, notes = choose_backend(requested, stage, present, missing, strict, exclude)
    for note in notes:
        log.log(note_level(note, (requested,)), "%s", note)
    return kind


def passed_over(note: str) -> str | None:
    """The backend ``note`` (of :func:`choose_backend`) says was passed over, or None for any other note."""
    head, sep, _ = note.partition(_PASSED_OVER[1])
    if not sep or not head.startswith(_PASSED_OVER[0]):
        return None
    return head[len(_PASSED_OVER[0]):]


def note_level(note: str, requested: Collection[str]) -> int:
    """The log level of a placement note. A backend passed over is a WARNING when the user named it
    (``requested``: the backends asked for), else DEBUG: on a CPU-only machine ``auto`` passing over
    CUDA and TensorRT is the normal case, not news on every command. Any other note is INFO."""
    kind = passed_over(note)
    if kind is None:
        return logging.INFO
    return logging.WARNING if kind in requested else logging.DEBUG


def choose_backend(requested: str, stage: str, present: Sequence[str], missing: Mapping[str, str],
                   strict: bool = False, exclude: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """The pure rule: ``auto`` takes the stage's best (:data:`AUTO_ORDER`) present and not in ``exclude``;
    a named backend that is absent falls back along that order (a note per backend passed over, with
    ``missing``'s reason), or raises when ``strict``."""
    if requested not in BACKENDS:
        raise InvalidInputError(f"backend '{requested}' is unknown; choose one of {', '.join(BACKENDS)}")
    if stage not in AUTO_ORDER:
        raise InvalidInputError(f"stage '{stage}' is unknown; choose one of {', '.join(AUTO_ORDER)}")
    if stage == "am" and requested == "tensorrt":
        raise InvalidInputError("TensorRT runs the vocoder only; put the acoustic model on cuda or cpu "
                                "(--am-backend cuda)", param="am_backend")
    best = tuple(b for b in AUTO_ORDER[stage] if b not in exclude)
    order = list(best) if requested == "auto" else [requested] + ([] if strict else [b for b in best if b != requested])
    notes: list[str] = []
    for kind in order:
        if kind in present:
            return kind, notes
        reason = missing.get(kind, f"{kind} is not present here")
        if strict and kind == requested:
            if kind == "openvino":
                raise MissingExtraError("openvino", "openvino")
            raise BackendUnavailableError(f"backend '{kind}' is not available: {reason}")
        notes.append(f"{_PASSED_OVER[0]}{kind}{_PASSED_OVER[1]}{reason}; falling back")
    return "cpu", notes


def make_backend(kind: str, path: str | Path, options: BackendOptions | None = None) -> Backend:
    """A new, not yet opened backend of ``kind`` for the ONNX graph at ``path`` (TensorRT runs engines,
    not graphs: :class:`~.tensorrt.TensorRTBackend`)."""
    if kind == "cpu":
        return OrtBackend(path, options)
    if kind == "cuda":
        return OrtCudaBackend(path, options)
    if kind == "openvino":
        import_openvino()  # MissingExtraError naming the extra, before any file is touched
        return OpenVinoBackend(path, options)
    raise BackendUnavailableError(unavailable_reason(kind))


def probe_backends(path: str | Path, options: BackendOptions | None = None) -> dict[str, str | None]:
    """Open ``path`` on every backend this machine lists: None where a session opens, else why not.
    A listed provider can still fail here (onnxruntime-gpu without a usable driver or CUDA libraries,
    a graph OpenVINO cannot compile)."""
    found: dict[str, str | None] = {}
    for kind in available_backends():
        if kind == "tensorrt":  # runs engines, not ONNX graphs: `sambert-deploy info` checks each engine
            continue
        try:
            with make_backend(kind, path, options):
                found[kind] = None
        except (BackendUnavailableError, BundleError, MissingExtraError) as e:
            found[kind] = str(e)
    return found
