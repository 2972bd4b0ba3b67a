"""The runtime's own small CUDA layer (ctypes over ``libcudart`` and ``libcuda``): device facts, free
memory, device buffers, streams and copies, for the TensorRT backend and the memory tiers. No torch,
no cuda-python: the slim runtime stays numpy + onnxruntime, and the CUDA runtime library is the one
onnxruntime-gpu or TensorRT already brought (NVIDIA's ``nvidia-cuda-runtime`` wheels, or the system's).

Every call's return code is checked; a failure is a :class:`~sambert_deploy.errors.CudaError` naming
the call, CUDA's error name and text, never a silent zero pointer.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, CudaError

log = logging.getLogger(__name__)

# cudaMemcpyKind and stream flags (cuda_runtime_api.h)
_H2D, _D2H = 1, 2
_NON_BLOCKING = 1
# cudaDeviceAttr
_CC_MAJOR, _CC_MINOR = 75, 76
_RUNTIME_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")
_DRIVER_NAMES = ("libcuda.so.1", "libcuda.so")


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine is tied to: the GPU's name and compute capability, and its memory now."""

    index: int
    name: str
    compute_capability: str  # "9.0"
    free_bytes: int
    total_bytes: int


def _wheel_candidates() -> list[str]:
    """libcudart from NVIDIA's pip wheels (``nvidia/cuda_runtime/lib`` for CUDA 12, ``nvidia/cu13/lib``
    for 13), which are not on the loader's path."""
    found = []
    for base in sys.path:
        for pattern in ("nvidia/cu13/lib/libcudart.so*", "nvidia/cuda_runtime/lib/libcudart.so*"):
            found.extend(sorted(glob.glob(os.path.join(base, pattern)), reverse=True))
    return found


def _load(names: tuple[str, ...], extra: list[str]) -> ctypes.CDLL | None:
    for name in (*names, *extra):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


class Cuda:
    """One process's handle on the CUDA runtime. ``runtime``/``driver`` may be given (tests pass fakes
    whose functions return error codes); otherwise the libraries are found and loaded, or
    :class:`BackendUnavailableError` says why not."""

    def __init__(self, runtime: Any = None, driver: Any = None):
        rt = runtime if runtime is not None else _load(_RUNTIME_NAMES, _wheel_candidates())
        if rt is None:
            raise BackendUnavailableError("the CUDA runtime library (libcudart) was not found; install the NVIDIA "
                                          "driver and pip install 'nvidia-cuda-runtime' (or onnxruntime-gpu[cuda])")
        self._rt: Any = rt
        self._driver = driver if driver is not None else _load(_DRIVER_NAMES, [])

    # -- checked calls ----------------------------------------------------------------------------
    def _error_text(self, code: int) -> str:
        try:
            name_fn, text_fn = self._rt.cudaGetErrorName, self._rt.cudaGetErrorString
            name_fn.restype = text_fn.restype = ctypes.c_char_p
            name, text = name_fn(code), text_fn(code)
            return f"{(name or b'?').decode()} ({code}): {(text or b'').decode()}"
        except Exception:  # noqa: BLE001 - the message must not fail on a broken library
            return f"error {code}"

    def call(self, fn: str, *args: Any, what: str = "") -> None:
        code = getattr(self._rt, fn)(*args)
        if code != 0:
            hint = ""
            if code == 2:  # cudaErrorMemoryAllocation
                hint = "; lower --max-gpu-memory use (fewer gpu streams, smaller chunks) or free GPU memory"
            elif code in (35, 100):  # cudaErrorInsufficientDriver, cudaErrorNoDevice
                hint = "; this machine has no usable NVIDIA GPU/driver: use --backend cpu"
            raise CudaError(f"{fn}{f'({what})' if what else ''} failed: {self._error_text(code)}{hint}")

    # -- device facts -----------------------------------------------------------------------------
    def device_count(self) -> int:
        n = ctypes.c_int(0)
        self.call("cudaGetDeviceCount", ctypes.byref(n))
        return n.value

    def set_device(self, index: int) -> None:
        self.call("cudaSetDevice", ctypes.c_int(index), what=str(index))

    def mem_info(self, index: int = 0) -> tuple[int, int]:
        """(free, total) bytes on device ``index``."""
        self.set_device(index)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        self.call("cudaMemGetInfo", ctypes.byref(free), ctypes.byref(total))
        return int(free.value), int(total.value)

    def compute_capability(self, index: int = 0) -> str:
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self.call("cudaDeviceGetAttribute", ctypes.byref(major), ctypes.c_int(_CC_MAJOR), ctypes.c_int(index))
        self.call("cudaDeviceGetAttribute", ctypes.byref(minor), ctypes.c_int(_CC_MINOR), ctypes.c_int(index))
        return f"{major.value}.{minor.value}"

    def device_name(self, index: int = 0) -> str:
        """The marketing name (``NVIDIA H200``) from the driver API; the runtime API only has it inside
        a version-dependent struct."""
        drv = self._driver
        if drv is None:
            return "unknown"
        buf = ctypes.create_string_buffer(256)
        dev = ctypes.c_int(0)
        for fn, args in (("cuInit", (ctypes.c_uint(0),)), ("cuDeviceGet", (ctypes.byref(dev), ctypes.c_int(index))),
                         ("cuDeviceGetName", (buf, ctypes.c_int(256), dev))):
            code = getattr(drv, fn)(*args)
            if code != 0:
                raise CudaError(f"{fn} failed with CUresult {code}; check the NVIDIA driver (nvidia-smi)")
        return buf.value.decode(errors="replace")

    def device(self, index: int = 0) -> DeviceInfo:
        if self.device_count() <= index:
            raise BackendUnavailableError(f"no CUDA device {index} on this machine; use --backend cpu")
        free, total = self.mem_info(index)
        return DeviceInfo(index, self.device_name(index), self.compute_capability(index), free, total)

    # -- memory and streams -------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p(0)
        self.call("cudaMalloc", ctypes.byref(ptr), ctypes.c_size_t(nbytes), what=f"{nbytes} bytes")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        if ptr:
            self.call("cudaFree", ctypes.c_void_p(ptr))

    def stream_create(self) -> int:
        s = ctypes.c_void_p(0)
        self.call("cudaStreamCreateWithFlags", ctypes.byref(s), ctypes.c_uint(_NON_BLOCKING))
        return int(s.value or 0)

    def stream_destroy(self, stream: int) -> None:
        self.call("cudaStreamDestroy", ctypes.c_void_p(stream))

    def synchronize(self, stream: int) -> None:
        self.call("cudaStreamSynchronize", ctypes.c_void_p(stream))

    def to_device(self, dst: int, src: np.ndarray, stream: int) -> None:
        a = np.ascontiguousarray(src)
        self.call("cudaMemcpyAsync", ctypes.c_void_p(dst), ctypes.c_void_p(a.ctypes.data), ctypes.c_size_t(a.nbytes),
                  ctypes.c_int(_H2D), ctypes.c_void_p(stream), what="host to device")

    def to_host(self, dst: np.ndarray, src: int, stream: int) -> None:
        if not dst.flags.c_contiguous:
            raise ValueError("to_host needs a C-contiguous destination")
        self.call("cudaMemcpyAsync", ctypes.c_void_p(dst.ctypes.data), ctypes.c_void_p(src), ctypes.c_size_t(dst.nbytes),
                  ctypes.c_int(_D2H), ctypes.c_void_p(stream), what="device to host")


class DeviceBuffer:
    """A device allocation that grows (never shrinks) to the largest size asked of it, so a stream's
    windows of varying length reuse one allocation."""

    def __init__(self, cuda: Cuda):
        self.cuda = cuda
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.release()
            self.ptr = self.cuda.malloc(max(nbytes, 256))
            self.nbytes = max(nbytes, 256)
        return self.ptr

    def release(self) -> None:
        ptr, self.ptr, self.nbytes = self.ptr, 0, 0
        self.cuda.free(ptr)


_shared: Cuda | None = None
_shared_lock = threading.Lock()


def cuda() -> Cuda:
    """The process's CUDA layer, loaded once (raises :class:`BackendUnavailableError` where absent)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Cuda()
        return _shared


def probe_device(index: int = 0) -> tuple[DeviceInfo | None, str]:
    """The GPU's facts, or None and why not (no library, no device, a driver too old)."""
    try:
        return cuda().device(index), ""
    except BackendUnavailableError as e:
        return None, str(e)
