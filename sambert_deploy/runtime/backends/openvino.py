"""OpenVINO's CPU plugin behind the one Backend interface (the optional ``openvino`` extra, imported
only when it is asked about or used): pooled infer requests, cancellation through the request, and
OpenVINO's compile errors turned into one line naming the cause and the fix."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendClosedError, BundleError, MissingExtraError, StreamCancelledError
from .base import Backend, BackendOptions, CancelToken, InputMeta, available_cpus, check_precision_hint

log = logging.getLogger(__name__)


def import_openvino() -> Any:
    """The ``openvino`` module, or :class:`MissingExtraError` naming the extra."""
    try:
        import openvino
    except ImportError:
        raise MissingExtraError("openvino", "openvino") from None
    return openvino


def openvino_missing() -> str | None:
    """Why ``import openvino`` fails here, or None when it works."""
    try:
        import_openvino()
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
        ov = import_openvino()
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
        self.require_open()
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
