"""One backend interface for running a graph: ONNX Runtime CPU EP and CUDA EP, and OpenVINO's CPU plugin.

A :class:`Backend` has a lifecycle (``open`` / ``close``, usable as a context manager), exposes its
input metadata, and validates names, dtypes and ranks centrally in :meth:`Backend.run` before the
implementation runs; a wrong input is an :class:`InvalidInputError` naming the tensor, never an ORT
traceback. :func:`select_backend` picks the best present provider (``auto``) and logs each fallback
with its reason, or raises :class:`BackendUnavailableError` (``strict``). OpenVINO is an optional extra,
imported only when it is asked about or used.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    BackendClosedError,
    BackendUnavailableError,
    BundleError,
    InvalidInputError,
    MissingExtraError,
    StreamCancelledError,
)

log = logging.getLogger(__name__)

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
    "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(double)": np.float64,
}

BACKENDS = ("auto", "tensorrt", "cuda", "openvino", "cpu")
PRECISION_HINTS = ("f32", "bf16", "f16")
# ``auto``, best first, per pipeline stage. OpenVINO runs the vocoder's convolutions faster than ORT
# (291 frames, AVX512_BF16 CPU: 1.8x with bf16 on one thread, 1.6x in f32 on two; even in f32 on one),
# but the acoustic model's decoder step is faster in ORT (~1 ms a call against ~3 ms: per-call overhead).
# TensorRT runs only the vocoder (its engines are built per window profile; the acoustic model's
# per-step decoder is launch-bound and stays on the CUDA EP with its key/value window on the device).
AUTO_ORDER = {"am": ("cuda", "cpu"), "vocoder": ("tensorrt", "cuda", "openvino", "cpu")}


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, e.g. under taskset or a
    container's cpuset), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class CancelToken:
    """Stops one stream's graph calls: checked before each call, and a call already running is told
    to stop (ONNX Runtime's ``RunOptions.terminate``, read between nodes), so a cancelled stream's
    worker is free within one graph node rather than one whole graph call."""

    def __init__(self) -> None:
        # Re-entrant: a Stream's finalizer cancels its token from whatever thread the garbage
        # collector runs in, possibly one inside ``running`` on this very token.
        self._lock = threading.RLock()
        self._cancelled = False
        self._running: set[Any] = set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            running = list(self._running)
        for run_options in running:
            run_options.terminate = True

    def check(self) -> None:
        if self._cancelled:
            raise StreamCancelledError("stream cancelled")

    @contextmanager
    def running(self, run_options: Any) -> Iterator[None]:
        """Register a call's run options for the duration of the call."""
        with self._lock:
            if self._cancelled:
                raise StreamCancelledError("stream cancelled")
            self._running.add(run_options)
        try:
            yield
        finally:
            with self._lock:
                self._running.discard(run_options)


@dataclass(frozen=True)
class InputMeta:
    name: str
    dtype: Any
    shape: tuple[int | str | None, ...]


@dataclass
class BackendOptions:
    """How to run graphs. ``threads``: intra-op threads of one call, 0 meaning all CPUs this process may
    use. ``precision_hint``: the compute precision OpenVINO uses (``f32``, ``bf16`` or ``f16``; None is
    f32); ORT computes in the graph's own types and refuses ``bf16``. ``graph_optimization`` and
    ``extra_session_options`` are ORT's and OpenVINO ignores them."""

    threads: int = 0
    device_id: int = 0
    cudnn_conv_algo_search: str = "HEURISTIC"
    graph_optimization: str = "all"
    extra_session_options: dict[str, str] = field(default_factory=dict)
    precision_hint: str | None = None
    gpu_mem_limit: int | None = None  # bytes the CUDA EP's arena may hold (the --max-gpu-memory budget)

    def __post_init__(self) -> None:
        check_precision_hint(self.precision_hint)


def check_precision_hint(hint: str | None) -> str | None:
    if hint is not None and hint not in PRECISION_HINTS:
        raise InvalidInputError(f"precision_hint '{hint}' is unknown; choose one of {', '.join(PRECISION_HINTS)} "
                                "(or None for the backend's default, f32)", param="precision_hint")
    return hint


class Backend(ABC):
    """Runs one graph. Subclasses implement ``_open``, ``_run`` and ``_close``.

    Lifecycle: new -> open (``open()``, or the first ``run()``) -> closed. A closed backend refuses
    ``open()`` and ``run()`` with :class:`BackendClosedError` instead of silently reopening (a
    service that closed its sessions must not find them back half-loaded). ``run`` may be called
    from several threads at once on an open backend (ONNX Runtime sessions allow it).
    """

    kind = "abstract"
    # Whether each new input shape costs a compilation (OpenVINO: +150-250 ms the first time a vocoder
    # window length is seen); callers then round lengths up to a few buckets where that is exact.
    compiles_per_shape = False

    def __init__(self, path: str | Path, options: BackendOptions | None = None):
        self.path = Path(path)
        self.options = options or BackendOptions()
        self._inputs: dict[str, InputMeta] = {}
        self._output_names: list[str] = []
        self._state = "new"

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> Backend:
        if self._state == "open":
            return self
        if self._state == "closed":
            raise BackendClosedError(f"{self.path.name}: backend was closed; create a new one (or a new Synthesizer)")
        self._inputs, self._output_names = self._open()
        self._state = "open"
        return self

    def close(self) -> None:
        if self._state == "open":
            self._close()
        self._state = "closed"

    @property
    def is_open(self) -> bool:
        return self._state == "open"

    def __enter__(self) -> Backend:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def inputs(self) -> Mapping[str, InputMeta]:
        self.open()
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        self.open()
        return list(self._output_names)

    # -- running --------------------------------------------------------------------------------
    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        expected = self.inputs
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        if missing or extra:
            raise InvalidInputError(f"{self.path.name}: inputs {sorted(feeds)} do not match the graph's "
                                    f"{sorted(expected)} (missing {missing}, unexpected {extra})")
        for name, meta in expected.items():
            a = feeds[name]
            if not isinstance(a, np.ndarray):
                raise InvalidInputError(f"{self.path.name}: input '{name}' must be a numpy array, got {type(a).__name__}")
            if a.dtype != meta.dtype:
                raise InvalidInputError(f"{self.path.name}: input '{name}' has dtype {a.dtype}, expected "
                                        f"{np.dtype(meta.dtype)}")
            if a.ndim != len(meta.shape):
                raise InvalidInputError(f"{self.path.name}: input '{name}' has rank {a.ndim} {a.shape}, expected "
                                        f"rank {len(meta.shape)} {meta.shape}")
            for i, (got, want) in enumerate(zip(a.shape, meta.shape, strict=True)):
                if isinstance(want, int) and want != got:
                    raise InvalidInputError(f"{self.path.name}: input '{name}' axis {i} is {got}, expected {want}")

    def run(self, feeds: Mapping[str, np.ndarray], validate: bool = True,
            token: CancelToken | None = None) -> dict[str, np.ndarray]:
        """Run the graph on numpy inputs; returns outputs by name. ``validate=False`` for hot loops
        whose inputs were validated once (the decoder's per-step state). With ``token``, a cancelled
        stream's call raises :class:`StreamCancelledError` (before it starts, or while it runs)."""
        self.open()
        if validate:
            self.check_inputs(feeds)
        return self._run(feeds, token)

    def run_keep(self, feeds: Mapping[str, Any], keep: frozenset[str] = frozenset(),
                 token: CancelToken | None = None) -> dict[str, Any]:
        """Like ``run`` without validation, but outputs named in ``keep`` may stay on the device (an
        opaque value to feed back as an input next time). Host backends return numpy for everything."""
        self.open()
        return self._run(feeds, token)

    @abstractmethod
    def _open(self) -> tuple[dict[str, InputMeta], list[str]]: ...

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray], token: CancelToken | None) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        pass


def _ort() -> Any:
    import onnxruntime as ort

    return ort


def session_error_message(path: Path, error: BaseException) -> str:
    """What went wrong when ONNX Runtime could not create a session, and the fix, from its message.

    ORT raises one generic Fail/InvalidGraph type for everything; its text tells a too-new opset or IR
    version, missing CUDA libraries and exhausted memory apart from a damaged file.
    """
    text = str(error)
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    low = text.lower()
    ort_version = getattr(_ort(), "__version__", "?")
    if "opset" in low or "ir version" in low or "is under development" in low:
        return (f"{path} needs a newer ONNX Runtime than the installed {ort_version} ({first}); upgrade it "
                "(pip install -U onnxruntime) or re-export the bundle with a lower --opset")
    if any(k in low for k in ("libcudnn", "libcublas", "libcudart", "libcufft", "cuda_", "cudaerror",
                              "cannot open shared object", "cuda driver", "no cuda-capable")):
        return (f"{path}: the CUDA execution provider could not start ({first}); install the CUDA/cuDNN "
                "libraries onnxruntime-gpu needs (pip install 'onnxruntime-gpu[cuda,cudnn]') or use --backend cpu")
    if "bad_alloc" in low or "out of memory" in low or "failed to allocate" in low:
        return f"{path}: out of memory while loading the graph ({first}); free memory or load fewer voices"
    if "protobuf" in low or "no graph" in low or "invalid model" in low or "load model" in low:
        return f"{path} is not a readable ONNX graph ({first}); the file is damaged: re-export the bundle"
    return f"{path} cannot be loaded by ONNX Runtime {ort_version} ({first}); re-export the bundle"


class OrtBackend(Backend):
    """ONNX Runtime with one execution provider list; the CPU EP is always the last fallback."""

    kind = "cpu"

    def __init__(self, path: str | Path, options: BackendOptions | None = None):
        super().__init__(path, options)
        if self.options.precision_hint == "bf16":
            raise InvalidInputError(f"{self.path.name}: precision_hint bf16 cannot run on ONNX Runtime (its CPU "
                                    "EP has no BF16 convolution); use the openvino backend "
                                    "(pip install 'sambert-deploy[openvino]')", param="precision_hint")

    def providers(self) -> list[Any]:
        return ["CPUExecutionProvider"]

    def session_options(self) -> Any:
        ort = _ort()
        so = ort.SessionOptions()
        level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                 "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                 "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                 "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[self.options.graph_optimization]
        so.graph_optimization_level = level
        # Explicit threads: ORT's default spins one thread per logical core, which on a 2-core box
        # with hyper-threads or beside a server's other sessions oversubscribes badly.
        so.intra_op_num_threads = self.options.threads or available_cpus()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        for k, v in self.options.extra_session_options.items():
            so.add_session_config_entry(k, v)
        return so

    def _open(self) -> tuple[dict[str, InputMeta], list[str]]:
        ort = _ort()
        if not self.path.is_file():
            raise BundleError(f"graph file {self.path} is missing; re-export the bundle")
        try:
            self.session = ort.InferenceSession(str(self.path), self.session_options(), providers=self.providers())
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            message = session_error_message(self.path, e)
            if "CUDA execution provider" in message:
                raise BackendUnavailableError(message) from None
            raise BundleError(message) from None
        inputs = {i.name: InputMeta(i.name, _ORT_TO_NUMPY.get(i.type, np.float32), tuple(i.shape))
                  for i in self.session.get_inputs()}
        return inputs, [o.name for o in self.session.get_outputs()]

    def _run(self, feeds: Mapping[str, np.ndarray], token: CancelToken | None) -> dict[str, np.ndarray]:
        if token is None:
            outs = self.session.run(self._output_names, dict(feeds))
        else:
            run_options = _ort().RunOptions()
            with token.running(run_options):
                try:
                    outs = self.session.run(self._output_names, dict(feeds), run_options)
                except Exception:
                    if token.cancelled:  # ORT's "terminate flag" failure: the stream was cancelled
                        raise StreamCancelledError("stream cancelled") from None
                    raise
        return dict(zip(self._output_names, outs, strict=True))

    def _close(self) -> None:
        del self.session


class OrtCudaBackend(OrtBackend):
    """ONNX Runtime CUDA EP (needs onnxruntime-gpu). Convolution algorithms use the heuristic search:
    the exhaustive search re-benchmarks every new chunk length of the vocoder."""

    kind = "cuda"

    def providers(self) -> list[Any]:
        cuda_options: dict[str, Any] = {"device_id": self.options.device_id,
                                        "cudnn_conv_algo_search": self.options.cudnn_conv_algo_search,
                                        "do_copy_in_default_stream": True}
        if self.options.gpu_mem_limit is not None:
            # The arena otherwise grows by powers of two past a budget; with a limit, allocations
            # beyond it fail (ORT's out-of-memory error) instead of taking another tenant's memory.
            cuda_options["gpu_mem_limit"] = int(self.options.gpu_mem_limit)
            cuda_options["arena_extend_strategy"] = "kSameAsRequested"
        return [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]

    def to_device(self, a: np.ndarray) -> Any:
        return _ort().OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", self.options.device_id)

    def run_keep(self, feeds: Mapping[str, Any], keep: frozenset[str] = frozenset(),
                 token: CancelToken | None = None) -> dict[str, Any]:
        """I/O binding: inputs that are OrtValues on the GPU are bound in place, outputs in ``keep`` stay
        on the GPU, so the decoder's key/value window never crosses PCIe between steps."""
        self.open()
        if token is not None:
            token.check()
        ort = _ort()
        binding = self.session.io_binding()
        for name, v in feeds.items():
            if isinstance(v, ort.OrtValue):
                binding.bind_ortvalue_input(name, v)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(v))
        for name in self._output_names:
            binding.bind_output(name, "cuda" if name in keep else "cpu", self.options.device_id if name in keep else 0)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return {n: (o if n in keep else o.numpy()) for n, o in zip(self._output_names, outs, strict=True)}

    def _open(self) -> tuple[dict[str, InputMeta], list[str]]:
        meta = super()._open()
        if "CUDAExecutionProvider" not in self.session.get_providers():
            raise BackendUnavailableError(f"CUDA EP could not be initialised for {self.path.name} "
                                          "(check the CUDA/cuDNN libraries onnxruntime-gpu needs)")
        return meta


def _ov() -> Any:
    try:
        import openvino
    except ImportError:
        raise MissingExtraError("openvino", "openvino") from None
    return openvino


def _openvino_missing() -> str | None:
    """Why ``import openvino`` fails here, or None when it works."""
    try:
        _ov()
    except MissingExtraError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a broken install (missing shared library) is "not available"
        return f"openvino cannot be imported ({type(e).__name__}: {e})"
    return None


def openvino_error_message(path: Path, error: BaseException, version: str) -> str:
    """OpenVINO's reason a graph did not compile, and the fix.

    Its messages open with one ``Exception from <source file>`` / ``Check ... failed at`` line per C++
    frame; the first line after those is the one that says what is wrong.
    """
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    frames = ("Exception from ", "Check '", "FrontEnd API failed")
    first = next((ln for ln in lines if not ln.startswith(frames)), lines[0] if lines else type(error).__name__)
    low = str(error).lower()
    if "can't be parsed" in low or "could not open" in low or "protobuf" in low:
        return f"{path} is not a readable ONNX graph ({first}); the file is damaged: re-export the bundle"
    if "bad_alloc" in low or "out of memory" in low:
        return f"{path}: out of memory while compiling the graph ({first}); free memory or load fewer voices"
    return (f"{path} cannot be compiled by OpenVINO {version} ({first}); upgrade it (pip install -U openvino) "
            "or run this graph on ONNX Runtime (--backend cpu)")


class _OvCancel:
    """What a :class:`CancelToken` sets ``terminate`` on for one OpenVINO call: OpenVINO stops a running
    request with ``InferRequest.cancel()`` (checked between nodes) instead of ORT's flag.

    Disarmed when the call ends: the token may call the setter after the call has left ``running``
    (it copies its set before calling), by which time the pooled request may run another stream's call.
    """

    __slots__ = ("_lock", "_request")

    def __init__(self, request: Any):
        self._lock = threading.Lock()
        self._request: Any = request

    @property
    def terminate(self) -> bool:
        return False

    @terminate.setter
    def terminate(self, value: bool) -> None:
        with self._lock:
            if value and self._request is not None:
                self._request.cancel()

    def disarm(self) -> None:
        with self._lock:
            self._request = None


class OpenVinoBackend(Backend):
    """OpenVINO's CPU plugin (the ``openvino`` extra) on the ONNX graph, dynamic axes included.

    ``options.threads`` is the threads of one call (0: all CPUs). OpenVINO runs at most one request per
    *stream* at a time, and ``INFERENCE_NUM_THREADS`` is the total of all streams: with 1 thread and 1
    stream, two callers take turns (measured: 2 threads calling gave 1.0x the throughput of one). The
    runtime's scheduler calls ``run`` from as many workers as it has CPUs, each call meant to use
    ``threads``; so there is one stream per ``threads`` CPUs, and as many threads in all.

    Requests are pooled: a call takes an idle one (or creates one) and returns it, so concurrent calls
    never share one and a request's buffers are reused across calls.
    """

    kind = "openvino"
    compiles_per_shape = True

    def __init__(self, path: str | Path, options: BackendOptions | None = None):
        super().__init__(path, options)
        check_precision_hint(self.options.precision_hint)
        self._pool_lock = threading.Lock()
        self._idle: list[Any] = []
        self._compiled: Any = None

    def config(self) -> dict[str, Any]:
        per_call = self.options.threads or available_cpus()
        streams = max(1, available_cpus() // per_call)
        return {
            # Explicit: on a CPU with BF16 (AVX512_BF16, AMX) OpenVINO's default is bf16, not f32.
            "INFERENCE_PRECISION_HINT": self.options.precision_hint or "f32",
            "INFERENCE_NUM_THREADS": per_call * streams,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": streams,
        }

    def _open(self) -> tuple[dict[str, InputMeta], list[str]]:
        ov = _ov()
        if not self.path.is_file():
            raise BundleError(f"graph file {self.path} is missing; re-export the bundle")
        config = self.config()
        core = ov.Core()
        try:
            # read_model first: its ports carry the ONNX tensor names alone, where the compiled model's
            # may add internal aliases of the same tensor.
            model = core.read_model(str(self.path))
            if any(op.get_type_name() == "Softmax" for op in model.get_ops()):
                # OpenVINO 2026.4 crashes the process (SIGSEGV in the CPU plugin's attention
                # tokenization, at compile time) on the tiny decoder_step in f32 with one thread per
                # stream. Attention graphs are the acoustic model's, which auto leaves on ORT anyway;
                # the vocoder has none and keeps its fused kernels.
                config["SNIPPETS_MODE"] = "DISABLE"
            try:
                compiled = core.compile_model(model, "CPU", config)
            except RuntimeError as e:
                if "SNIPPETS_MODE" not in str(e):
                    raise
                # An internal key a later OpenVINO may no longer accept (and may no longer need).
                del config["SNIPPETS_MODE"]
                compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError for everything
            raise BundleError(openvino_error_message(self.path, e, ov.get_version().split("-")[0])) from None
        self._compiled = compiled
        # What OpenVINO chose, read back: it may change a hint the CPU cannot honour (f16 -> bf16 on
        # AVX512_BF16 without FP16 units).
        eff = self._effective(compiled)
        log.info("%s on OpenVINO %s: precision %s (asked %s), %s threads in %s streams, %s hint", self.path.name,
                 ov.get_version().split("-")[0], eff["INFERENCE_PRECISION_HINT"], config["INFERENCE_PRECISION_HINT"],
                 eff["INFERENCE_NUM_THREADS"], eff["NUM_STREAMS"], eff["PERFORMANCE_HINT"])
        inputs = {}
        for port in model.inputs:
            name = port.get_any_name()
            # OpenVINO keeps no name for a dynamic dimension (the ONNX symbol is dropped): None.
            shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            inputs[name] = InputMeta(name, np.dtype(port.get_element_type().to_dtype()).type, shape)
        self._input_names = list(inputs)
        return inputs, [_output_name(port) for port in model.outputs]

    def effective_config(self) -> dict[str, Any]:
        """The compiled model's settings as OpenVINO applied them (``INFERENCE_PRECISION_HINT`` spelt
        like the hint: ``f32``, ``bf16``...)."""
        self.open()
        return self._effective(self._compiled)

    @staticmethod
    def _effective(compiled: Any) -> dict[str, Any]:
        eff = {k: compiled.get_property(k) for k in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT")}
        eff["INFERENCE_PRECISION_HINT"] = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        eff["PERFORMANCE_HINT"] = str(eff["PERFORMANCE_HINT"]).rsplit(".", 1)[-1]
        return eff

    def _request(self) -> Any:
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
            compiled = self._compiled
        if compiled is None:
            raise BackendClosedError(f"{self.path.name}: backend was closed while a call was starting")
        return compiled.create_infer_request()

    def _give_back(self, request: Any) -> None:
        with self._pool_lock:
            if self._compiled is not None:
                self._idle.append(request)

    def _run(self, feeds: Mapping[str, np.ndarray], token: CancelToken | None) -> dict[str, np.ndarray]:
        if token is not None:
            token.check()
        request = self._request()
        try:
            # share_inputs: no copy of the inputs; they outlive the call, which waits for its end.
            inputs = {i: np.ascontiguousarray(feeds[n]) for i, n in enumerate(self._input_names)}
            if token is None:
                request.start_async(inputs, share_inputs=True)
                request.wait()
            else:
                cancel = _OvCancel(request)
                try:
                    with token.running(cancel):
                        request.start_async(inputs, share_inputs=True)
                        # A cancel between ``running`` and the start found an idle request: no effect.
                        if token.cancelled:
                            request.cancel()
                        request.wait()
                except RuntimeError:
                    if token.cancelled:
                        raise StreamCancelledError("stream cancelled") from None
                    raise
                finally:
                    cancel.disarm()
            # Copies: the request's output buffers are overwritten by its next call.
            return {n: np.array(request.get_output_tensor(i).data, copy=True)
                    for i, n in enumerate(self._output_names)}
        finally:
            self._give_back(request)

    def _close(self) -> None:
        with self._pool_lock:
            self._idle.clear()
            self._compiled = None


def _type_name(element_type: Any) -> str:
    """``bf16`` for OpenVINO's ``Type.bf16`` (the spelling of the hint), the text of anything else."""
    name = getattr(element_type, "get_type_name", None)
    return str(name()) if callable(name) else str(element_type)


def _output_name(port: Any) -> str:
    """The ONNX graph output a port is; OpenVINO's ONNX frontend names its Result ``<output>/sink_port_0``."""
    names = port.get_names()
    stem = port.get_node().get_friendly_name().rsplit("/sink_port_", 1)[0]
    return stem if stem in names else port.get_any_name()


def available_backends() -> list[str]:
    """Backends usable here, best first."""
    found = []
    try:
        provs = _ort().get_available_providers()
    except ImportError:
        provs = []
    from .trt_backend import tensorrt_missing

    if tensorrt_missing() is None:
        found.append("tensorrt")
    if "CUDAExecutionProvider" in provs:
        found.append("cuda")
    if _openvino_missing() is None:
        found.append("openvino")
    found.append("cpu")
    return found


def unavailable_reason(kind: str) -> str:
    if kind == "tensorrt":
        from .trt_backend import tensorrt_missing

        return tensorrt_missing() or "TensorRT failed to start"
    if kind == "cuda":
        return ("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a machine with an "
                "NVIDIA GPU: pip uninstall onnxruntime && pip install onnxruntime-gpu)")
    if kind == "openvino":
        return _openvino_missing() or "openvino failed to start"
    return f"unknown backend '{kind}'; choose one of {', '.join(BACKENDS)}"


def select_backend(requested: str = "auto", strict: bool = False, stage: str = "am",
                   exclude: frozenset[str] = frozenset()) -> str:
    """Resolve ``auto``/a named backend to one that is present for ``stage`` (``am`` or ``vocoder``),
    logging each fallback and its reason. ``auto`` takes the stage's best (:data:`AUTO_ORDER`) not in
    ``exclude``; a named backend that is missing falls back along that order, or raises when ``strict``."""
    if requested not in BACKENDS:
        raise InvalidInputError(f"backend '{requested}' is unknown; choose one of {', '.join(BACKENDS)}")
    if stage not in AUTO_ORDER:
        raise InvalidInputError(f"stage '{stage}' is unknown; choose one of {', '.join(AUTO_ORDER)}")
    if stage == "am" and requested == "tensorrt":
        raise InvalidInputError("TensorRT runs the vocoder only; put the acoustic model on cuda or cpu "
                                "(--am-backend cuda)", param="am_backend")
    present = available_backends()
    best = tuple(b for b in AUTO_ORDER[stage] if b not in exclude)
    if requested == "auto":
        order = list(best)
    else:
        order = [requested] + ([] if strict else [b for b in best if b != requested])
    for kind in order:
        if kind in present:
            return kind
        reason = unavailable_reason(kind)
        if strict and kind == requested:
            if kind == "openvino":
                raise MissingExtraError("openvino", "openvino")
            raise BackendUnavailableError(f"backend '{kind}' is not available: {reason}")
        log.info("backend %s not used: %s; falling back", kind, reason)
    return "cpu"


def make_backend(kind: str, path: str | Path, options: BackendOptions | None = None) -> Backend:
    if kind == "cpu":
        return OrtBackend(path, options)
    if kind == "cuda":
        return OrtCudaBackend(path, options)
    if kind == "openvino":
        _ov()  # MissingExtraError naming the extra, before any file is touched
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
