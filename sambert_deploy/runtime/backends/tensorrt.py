"""TensorRT engines at run time: the :class:`TensorRTBackend` that runs one behind the one Backend
interface (numpy in, numpy out; device memory through the runtime's own CUDA layer, no torch), the
facts of the machine an engine must match, and :func:`engine_reports` on a voice's built engines.

One code path for TensorRT 10 and 11: engines are built strongly typed (precision comes from the ONNX:
the FP16 variant's casts, the INT8 variant's Q/DQ), and the run-time API used here (named tensors,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) is the same in both. The sidecar
and its checks are :mod:`.sidecar`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import BackendClosedError, BackendUnavailableError, BundleError, InvalidInputError
from ..cuda import Cuda, DeviceBuffer, cuda
from .base import Backend, BackendOptions, CancelToken, InputMeta
from .sidecar import ENGINES_DIR, EngineTarget, Host, Sidecar, check_sidecar, read_sidecar, rebuild_command

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

INSTALL_HINT = ("pip install tensorrt-cu13 (or tensorrt-cu12) from NVIDIA's package index; on Jetson use "
                "JetPack's TensorRT 10 (apt install python3-libnvinfer)")


def host_facts(device: int = 0) -> Host:
    """The installed TensorRT and GPU ``device`` (raises :class:`BackendUnavailableError` without them)."""
    import_tensorrt()
    import tensorrt as trt

    dev = cuda().device(device)
    return Host(trt.__version__, dev.name, dev.compute_capability)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`BackendUnavailableError` saying how to install it. The type
    stubs (``tensorrt-stubs``, for mypy) install an empty ``tensorrt`` package: that is not TensorRT."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError(f"TensorRT is not installed; {INSTALL_HINT}") from None
    except Exception as e:  # noqa: BLE001 - a broken install (libnvinfer missing) is "not available"
        raise BackendUnavailableError(f"TensorRT cannot be imported ({type(e).__name__}: {e}); {INSTALL_HINT}") from None
    if not hasattr(trt, "Runtime"):
        raise BackendUnavailableError(f"TensorRT is not installed (only its type stubs are); {INSTALL_HINT}")
    return trt


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here (the library, or a CUDA GPU), or None where it can."""
    try:
        import_tensorrt()
        # Counting devices creates no CUDA context (no GPU memory taken, the process stays fork-safe),
        # unlike a memory query: this runs on every backend listing, CPU-only runs included.
        if cuda().device_count() < 1:
            return "no CUDA device on this machine"
    except BackendUnavailableError as e:
        return str(e)
    return None


_logger: Any = None
_logger_lock = threading.Lock()


def trt_logger(trt: Any) -> Any:
    """TensorRT wants one logger per process."""
    global _logger
    with _logger_lock:
        if _logger is None:
            _logger = trt.Logger(trt.Logger.WARNING)
        return _logger


def _activation_bytes(engine: trt.ICudaEngine) -> int:
    """``device_memory_size_v2`` (TensorRT 10.1+, the only one in 11), else 10.0's ``device_memory_size``."""
    size: Any = getattr(engine, "device_memory_size_v2", None)
    if size is None:
        size = getattr(engine, "device_memory_size", 0)
    return int(size)


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


class _Context:
    """One execution context with its own CUDA stream and device buffers: one per concurrent caller,
    since a context runs one enqueue at a time."""

    def __init__(self, engine: trt.ICudaEngine, cu: Cuda, names: list[str]):
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError("TensorRT could not create an execution context (out of GPU memory?); "
                                          "lower --max-gpu-memory use or gpu streams")
        self.stream = cu.stream_create()
        self.buffers = {n: DeviceBuffer(cu) for n in names}

    def release(self, cu: Cuda) -> None:
        for b in self.buffers.values():
            b.release()
        cu.stream_destroy(self.stream)
        del self.context


class TensorRTBackend(Backend):
    """Runs one serialized engine (``path``: the ``.plan`` file; its sidecar beside it).

    ``target`` is what the engine must match besides the installed TensorRT and GPU (checked in
    :meth:`open` before deserializing); without one, those alone are. ``max_contexts`` bounds the
    execution contexts (concurrent calls; each holds ``device_memory_size_v2`` bytes of activations):
    the memory tier's ``gpu_streams``. Calls beyond it wait for a free context.
    """

    kind = "tensorrt"

    def __init__(self, path: str | Path, options: BackendOptions | None = None, target: EngineTarget | None = None,
                 max_contexts: int = 2):
        super().__init__(path, options)
        if max_contexts < 1:
            raise InvalidInputError(f"max_contexts must be >= 1, got {max_contexts}")
        self.target = target
        self.max_contexts = max_contexts
        self._cond = threading.Condition()
        self._idle: list[_Context] = []
        self._all: list[_Context] = []
        self._engine: trt.ICudaEngine | None = None
        self._dtypes: dict[str, Any] = {}
        self.sidecar: Sidecar | None = None

    def _open(self) -> tuple[dict[str, InputMeta], list[str]]:
        here = host_facts(self.options.device_id)  # one line where TensorRT (or only its stubs) or a GPU is missing
        import tensorrt as trt  # typed by tensorrt-stubs under mypy

        sc = read_sidecar(self.path)
        check_sidecar(sc, self.target or EngineTarget(sc.precision, sc.onnx_sha256), here, self.path)
        cu = cuda()
        runtime = trt.Runtime(trt_logger(trt))
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise BundleError(f"cannot read the engine {self.path} ({e.strerror}); check its permissions") from None
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BundleError(f"TensorRT {trt.__version__} could not deserialize {self.path} (damaged file?); "
                              f"rebuild it: {rebuild_command(sc.voice, sc.precision)}")
        self._runtime, self._engine, self.sidecar, self._cuda = runtime, engine, sc, cu
        inputs: dict[str, InputMeta] = {}
        outputs: list[str] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self._dtypes[name] = dtype
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = tuple(None if d < 0 else d for d in _dims(engine.get_tensor_shape(name)))
                inputs[name] = InputMeta(name, dtype.type, shape)
            else:
                outputs.append(name)
        self._names = [*inputs, *outputs]
        log.info("%s: TensorRT %s engine (%s, built for %s sm_%s), %d MB of activations per context, up to %d "
                 "context(s)", self.path.name, trt.__version__, sc.precision, sc.gpu,
                 sc.compute_capability.replace(".", ""), _activation_bytes(engine) >> 20, self.max_contexts)
        return inputs, outputs

    @property
    def contexts(self) -> int:
        """Execution contexts created so far (at most ``max_contexts``)."""
        with self._cond:
            return len(self._all)

    def _take(self) -> _Context:
        with self._cond:
            while True:
                if self._engine is None:
                    raise BackendUnavailableError(f"{self.path.name}: backend was closed while a call was waiting")
                if self._idle:
                    return self._idle.pop()
                if len(self._all) < self.max_contexts:
                    ctx = _Context(self._engine, self._cuda, self._names)
                    self._all.append(ctx)
                    return ctx
                self._cond.wait()

    def _give_back(self, ctx: _Context) -> None:
        with self._cond:
            if self._engine is not None:
                self._idle.append(ctx)
                self._cond.notify()
                return
        ctx.release(self._cuda)  # closed while this call ran: its context goes now, not under it

    def _run(self, feeds: Mapping[str, np.ndarray], token: CancelToken | None) -> dict[str, np.ndarray]:
        # A window is a few milliseconds on the GPU: cancellation is checked between calls, not inside.
        if token is not None:
            token.check()
        sc = self.sidecar
        if sc is None:  # set by _open, which run() requires
            raise BackendClosedError(f"{self.path.name}: backend is not open")
        for name in self._inputs:
            rng = sc.profiles.get(name)
            shape = tuple(feeds[name].shape)
            if rng is not None and not rng.covers(shape):
                raise InvalidInputError(f"{self.path.name}: input '{name}' of shape {list(shape)} is outside the "
                                        f"engine's profile {list(rng.min)}..{list(rng.max)}; stream it in windows, "
                                        f"or rebuild with a larger --max-frames: {rebuild_command(sc.voice, sc.precision)}")
        cu = self._cuda
        cu.set_device(self.options.device_id)  # per thread: allocations and the enqueue go to this GPU
        ctx = self._take()
        try:
            if token is not None:  # cancelled while it waited for a free context
                token.check()
            keep = []  # host arrays must outlive the asynchronous copies
            for name in self._inputs:
                a = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
                keep.append(a)
                ptr = ctx.buffers[name].ensure(a.nbytes)
                if not ctx.context.set_input_shape(name, a.shape):
                    raise InvalidInputError(f"{self.path.name}: TensorRT refused shape {list(a.shape)} for '{name}'")
                cu.to_device(ptr, a, ctx.stream)
                ctx.context.set_tensor_address(name, ptr)
            outs: dict[str, np.ndarray] = {}
            for name in self._output_names:
                host = np.empty(_dims(ctx.context.get_tensor_shape(name)), self._dtypes[name])
                ctx.context.set_tensor_address(name, ctx.buffers[name].ensure(host.nbytes))
                outs[name] = host
            if not ctx.context.execute_async_v3(ctx.stream):
                raise BackendUnavailableError(f"{self.path.name}: TensorRT failed to enqueue the call (see its log)")
            for name, host in outs.items():
                cu.to_host(host, ctx.buffers[name].ptr, ctx.stream)
            cu.synchronize(ctx.stream)
            del keep
            return outs
        finally:
            self._give_back(ctx)

    def _close(self) -> None:
        with self._cond:
            idle, self._all, self._idle = self._idle, [], []
            self._engine = None
            self._cond.notify_all()
        for ctx in idle:  # contexts still running are released when their call gives them back
            ctx.release(self._cuda)


@dataclass(frozen=True)
class EngineReport:
    """One built engine of a voice, as ``sambert-deploy info`` shows it."""

    plan: Path
    precision: str
    built: str  # what it was built for
    loads: bool | None  # None: not checkable here (no TensorRT or GPU)
    status: str


def engine_reports(manifest: Any, voice: Any) -> list[EngineReport]:
    """A voice's engines: what each was built for, and whether it would load here (checked against the
    installed TensorRT and GPU where both are present)."""
    folder = Path(manifest.root) / ENGINES_DIR / voice.name
    plans = sorted(folder.glob("*.plan")) if folder.is_dir() else []
    if not plans:
        return []
    missing = tensorrt_missing()
    here = host_facts() if missing is None else None
    out = []
    for plan in plans:
        precision = "?"
        try:
            sc = read_sidecar(plan)
            precision = sc.precision
            graph = voice.graphs["vocoder"] if sc.precision == "fp32" else voice.variants[sc.precision].graph
            built = (f"{sc.precision}, TensorRT {sc.tensorrt}, {sc.gpu} sm_{sc.compute_capability.replace('.', '')}, "
                     + ", ".join(f"{k} {list(r.min)}..{list(r.max)} opt {list(r.opt)}" for k, r in sc.profiles.items()))
            if here is None:
                out.append(EngineReport(plan, precision, built, None, f"not checked here ({missing})"))
                continue
            check_sidecar(sc, EngineTarget(sc.precision, graph.sha256), here, plan)
            out.append(EngineReport(plan, precision, built, True, "loads here"))
        except (BundleError, KeyError) as e:
            out.append(EngineReport(plan, precision, "?", False, f"unusable: {e}"))
    return out
