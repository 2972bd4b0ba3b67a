"""One backend interface for running a graph, and its implementations.

- :mod:`.base`: :class:`Backend` (lifecycle, input metadata, the central input check, capability
  flags), :class:`BackendOptions`, :class:`CancelToken`.
- :mod:`.ort`: ONNX Runtime's CPU EP and CUDA EP (I/O binding keeps outputs on the device).
- :mod:`.openvino`: OpenVINO's CPU plugin (the optional ``openvino`` extra, imported when used).
- :mod:`.sidecar` and :mod:`.tensorrt`: TensorRT engines, what each must match, and their backend.
- :mod:`.select`: what this machine lists, ``auto``/``strict`` selection per stage, ``make_backend``.

The names below are the public ones; import them from here.
"""

from __future__ import annotations

from .base import (
    PRECISION_HINTS,
    Backend,
    BackendOptions,
    CancelToken,
    InputMeta,
    available_cpus,
    check_precision_hint,
    cpu_flags,
)
from .openvino import OpenVinoBackend, import_openvino, openvino_error_message, openvino_missing
from .ort import OrtBackend, OrtCudaBackend, session_error_message
from .select import (
    AUTO_ORDER,
    BACKENDS,
    available_backends,
    choose_backend,
    make_backend,
    probe_backends,
    select_backend,
    unavailable_reason,
)
from .sidecar import (
    ENGINES_DIR,
    SIDECAR_FORMAT,
    EngineTarget,
    Host,
    ShapeRange,
    Sidecar,
    check_sidecar,
    engine_path,
    read_sidecar,
    rebuild_command,
    sidecar_path,
)
from .tensorrt import (
    INSTALL_HINT,
    EngineReport,
    TensorRTBackend,
    engine_reports,
    host_facts,
    import_tensorrt,
    tensorrt_missing,
    trt_logger,
)

__all__ = [
    "AUTO_ORDER", "BACKENDS", "ENGINES_DIR", "INSTALL_HINT", "PRECISION_HINTS", "SIDECAR_FORMAT",
    "Backend", "BackendOptions", "CancelToken", "EngineReport", "EngineTarget", "Host", "InputMeta",
    "OpenVinoBackend", "OrtBackend", "OrtCudaBackend", "ShapeRange", "Sidecar", "TensorRTBackend",
    "available_backends", "available_cpus", "cpu_flags", "check_precision_hint", "check_sidecar", "engine_path",
    "engine_reports", "host_facts", "import_openvino", "import_tensorrt", "make_backend",
    "openvino_error_message", "openvino_missing", "probe_backends", "read_sidecar", "rebuild_command",
    "choose_backend", "select_backend", "session_error_message", "sidecar_path", "tensorrt_missing", "trt_logger",
    "unavailable_reason",
]
