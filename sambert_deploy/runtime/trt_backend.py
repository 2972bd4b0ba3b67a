"""TensorRT engines at run time: where a voice's engines live, the sidecar each carries, the checks made
before one is deserialized, and the :class:`TensorRTBackend` that runs it behind the one Backend
interface (numpy in, numpy out; device memory through the runtime's own CUDA layer, no torch).

An engine only runs where it was built: the same TensorRT version, the same GPU model (compute
capability), the precision and ONNX graph it was made from, and a shape profile that covers the
windows the runtime will feed. Each of those is a field of the sidecar (``<engine>.json``); a mismatch
is an :class:`~sambert_deploy.errors.EngineMismatchError` naming the field and the rebuild command,
never a TensorRT deserialization failure deep in a stream.

One code path for TensorRT 10 and 11: engines are built strongly typed (precision comes from the ONNX:
the FP16 variant's casts, the INT8 variant's Q/DQ), and the run-time API used here (named tensors,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) is the same in both.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailableError, BundleError, EngineMismatchError, InvalidInputError
from .backends import Backend, BackendOptions, CancelToken, InputMeta
from .cuda import Cuda, DeviceBuffer, cuda

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
SIDECAR_FORMAT = 1
INSTALL_HINT = ("pip install tensorrt-cu13 (or tensorrt-cu12) from NVIDIA's package index; on Jetson use "
                "JetPack's TensorRT 10 (apt install python3-libnvinfer)")


def engine_path(root: str | Path, voice: str, onnx_file: str) -> Path:
    """``BUNDLE/engines/<voice>/<graph file stem>.plan``: one engine per graph file and precision
    (``vocoder.plan``, ``vocoder.fp16.plan``, ``vocoder.int8.plan``)."""
    return Path(root) / ENGINES_DIR / voice / (Path(onnx_file).stem + ".plan")


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


def host_facts(device: int = 0) -> Host:
    """The installed TensorRT and GPU ``device`` (raises :class:`BackendUnavailableError` without them)."""
    import_tensorrt()
    import tensorrt as trt

    dev = cuda().device(device)
    return Host(trt.__version__, dev.name, dev.compute_capability)


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
        assert sc is not None
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


def engine_lines(voice: str, reports: list[EngineReport]) -> list[str]:
    """``sambert-deploy info``'s lines on a voice's engines (:func:`engine_reports`)."""
    if not reports:
        return [f"TensorRT engines: none (sambert-deploy engines BUNDLE --voice {voice} --precision fp16)"]
    return [f"TensorRT engine {r.plan.name} ({r.built}): {r.status}" for r in reports]
