"""ONNX Runtime backends: the CPU EP, and the CUDA EP with I/O binding (outputs kept on the device);
ORT's session errors turned into one line naming the cause and the fix."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ...errors import BackendUnavailableError, BundleError, InvalidInputError, StreamCancelledError
from .base import Backend, BackendOptions, CancelToken, InputMeta, available_cpus

log = logging.getLogger(__name__)

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
    "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
}

T = TypeVar("T")


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


def _provider_name(provider: Any) -> str:
    """``"CUDAExecutionProvider"`` of a providers-list entry (a name, or a (name, options) pair)."""
    return provider if isinstance(provider, str) else str(provider[0])


def cancellable(token: CancelToken | None, call: Callable[[Any], T]) -> T:
    """``call(run_options)`` under ``token``: None without one; else fresh ``RunOptions`` whose
    ``terminate`` the token sets on cancel, ORT's failure on that flag becoming
    :class:`StreamCancelledError`. A cancelled token refuses to start the call."""
    if token is None:
        return call(None)
    run_options = _ort().RunOptions()
    with token.running(run_options):
        try:
            return call(run_options)
        except Exception:
            if token.cancelled:  # ORT's "terminate flag" failure: the stream was cancelled
                raise StreamCancelledError("stream cancelled") from None
            raise


class OrtBackend(Backend):
    """ONNX Runtime with one execution provider list; the CPU EP is always the last fallback. The
    first provider of :meth:`providers` must be the one the session got, or it does not open."""

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
        providers = self.providers()
        try:
            self.session = ort.InferenceSession(str(self.path), self.session_options(), providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            message = session_error_message(self.path, e)
            if "CUDA execution provider" in message:
                raise BackendUnavailableError(message) from None
            raise BundleError(message) from None
        wanted = _provider_name(providers[0])
        if wanted not in self.session.get_providers():
            del self.session
            raise BackendUnavailableError(f"{wanted.removesuffix('ExecutionProvider')} EP could not be initialised "
                                          f"for {self.path.name} (check the CUDA/cuDNN libraries onnxruntime-gpu needs)")
        inputs = {i.name: InputMeta(i.name, _ORT_TO_NUMPY.get(i.type, np.float32), tuple(i.shape))
                  for i in self.session.get_inputs()}
        return inputs, [o.name for o in self.session.get_outputs()]

    def _run(self, feeds: Mapping[str, np.ndarray], token: CancelToken | None) -> dict[str, np.ndarray]:
        names, inputs = self._output_names, dict(feeds)
        outs = cancellable(token, lambda run_options: self.session.run(names, inputs, run_options))
        return dict(zip(names, outs, strict=True))

    def _close(self) -> None:
        del self.session


class OrtCudaBackend(OrtBackend):
    """ONNX Runtime CUDA EP (needs onnxruntime-gpu). Convolution algorithms use the heuristic search:
    the exhaustive search re-benchmarks every new chunk length of the vocoder.

    ``run_keep`` uses I/O binding: inputs that are OrtValues (from :meth:`to_device`, or a kept output)
    are bound in place and outputs in ``keep`` stay on ``device``, so the decoder's key/value window
    never crosses PCIe between steps.
    """

    kind = "cuda"
    keeps_outputs_on_device = True
    device = "cuda"  # where to_device and kept outputs live (ORT's device name)

    def providers(self) -> list[Any]:
        cuda_options: dict[str, Any] = {"device_id": self.options.device_id,
                                        "cudnn_conv_algo_search": self.options.cudnn_conv_algo_search,
                                        "do_copy_in_default_stream": True,
                                        "use_tf32": int(self.options.tf32)}
        if self.options.gpu_mem_limit is not None:
            # The arena otherwise grows by powers of two past a budget; with a limit, allocations
            # beyond it fail (ORT's out-of-memory error) instead of taking another tenant's memory.
            cuda_options["gpu_mem_limit"] = int(self.options.gpu_mem_limit)
            cuda_options["arena_extend_strategy"] = "kSameAsRequested"
        return [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]

    def to_device(self, a: np.ndarray) -> Any:
        return _ort().OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device, self.options.device_id)

    def to_host(self, value: Any) -> np.ndarray:
        if isinstance(value, _ort().OrtValue):
            return value.numpy()
        return super().to_host(value)

    def tensor_facts(self, value: Any) -> tuple[np.dtype[Any], tuple[int, ...]] | None:
        if isinstance(value, _ort().OrtValue):
            return np.dtype(_ORT_TO_NUMPY.get(value.data_type(), np.object_)), tuple(value.shape())
        return super().tensor_facts(value)

    def _run_keep(self, feeds: Mapping[str, Any], keep: frozenset[str],
                  token: CancelToken | None) -> dict[str, Any]:
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
            binding.bind_output(name, self.device if name in keep else "cpu",
                                self.options.device_id if name in keep else 0)
        cancellable(token, lambda run_options: self.session.run_with_iobinding(binding, run_options))
        outs = binding.get_outputs()
        return {n: (o if n in keep else o.numpy()) for n, o in zip(self._output_names, outs, strict=True)}
