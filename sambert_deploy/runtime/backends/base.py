"""The one backend interface: lifecycle, input metadata, one central input check, cancellation.

A :class:`Backend` is created closed (``new``), opened once (``open()``, or ``with backend:``) and
closed once; ``run``/``run_keep``/``inputs``/``output_names`` on a backend that is not open raise
:class:`BackendClosedError` (never a silent lazy open: a service that closed its sessions must not
find them back half-loaded). Inputs are checked centrally (names, dtypes, ranks, fixed axes) before
the implementation runs, so a wrong input is an :class:`InvalidInputError` naming the tensor, never a
provider traceback. What a backend can do beyond numpy in / numpy out is said by flags
(:attr:`Backend.compiles_per_shape`, :attr:`Backend.keeps_outputs_on_device`), not by its class.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendClosedError, InvalidInputError, StreamCancelledError

PRECISION_HINTS = ("f32", "bf16", "f16")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, e.g. under taskset or a
    container's cpuset), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the CPU reports (``/proc/cpuinfo``: ``avx512_bf16``, ``amx_bf16``, ...);
    empty where the OS does not list them (macOS, Windows), which leaves the order measured here."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


class CancelToken:
    """Stops one stream's graph calls: checked before each call, and a call already running is told
    to stop (ONNX Runtime's ``RunOptions.terminate``, read between nodes; OpenVINO's request cancel),
    so a cancelled stream's worker is free within one graph node rather than one whole graph call."""

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
        """Register a call's run options (anything with a settable ``terminate``) for the duration of
        the call."""
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
    # FP32 graphs compute in FP32 on the GPU too: ORT's CUDA EP rounds matmul/conv inputs to TF32 on
    # Ampere and later unless told not to (measured on the H200: GPU vs CPU FP32 audio max-abs 1.6e-2).
    # The FP16 variant is the fast path; True trades FP32 parity for TF32 speed.
    tf32: bool = False

    def __post_init__(self) -> None:
        check_precision_hint(self.precision_hint)


def check_precision_hint(hint: str | None) -> str | None:
    if hint is not None and hint not in PRECISION_HINTS:
        raise InvalidInputError(f"precision_hint '{hint}' is unknown; choose one of {', '.join(PRECISION_HINTS)} "
                                "(or None for the backend's default, f32)", param="precision_hint")
    return hint


class Backend(ABC):
    """Runs one graph. Subclasses implement ``_open``, ``_run`` and ``_close`` (and ``_run_keep`` and
    ``to_device`` where outputs can stay on the device).

    Lifecycle: new -> open -> closed, each step once. ``run`` may be called from several threads at
    once on an open backend (ONNX Runtime sessions allow it; the others pool their per-call state).

    Input check: every call with ``validate=True``, and the first call of the backend whatever the
    caller says, so a hot loop that validates only its first step (``validate=first``) cannot skip
    the check on a backend that never saw a checked call.
    """

    kind = "abstract"
    # Whether each new input shape costs a compilation (OpenVINO: +150-250 ms the first time a vocoder
    # window length is seen); callers then round lengths up to a few buckets where that is exact.
    compiles_per_shape = False
    # Whether ``run_keep`` can leave outputs on the device and take them back as inputs (values made by
    # ``to_device``): the acoustic decoder then keeps its key/value window there between steps.
    keeps_outputs_on_device = False

    def __init__(self, path: str | Path, options: BackendOptions | None = None):
        self.path = Path(path)
        self.options = options or BackendOptions()
        self._inputs: dict[str, InputMeta] = {}
        self._output_names: list[str] = []
        self._state = "new"
        self._checked = False  # a call's inputs passed check_inputs

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

    def require_open(self) -> None:
        """Raise :class:`BackendClosedError` unless the backend is open."""
        if self._state != "open":
            if self._state == "closed":
                raise BackendClosedError(f"{self.path.name}: backend was closed; create a new one "
                                         "(or a new Synthesizer)")
            raise BackendClosedError(f"{self.path.name}: backend is not open; call open() first "
                                     "(or use it in a with block)")

    def __enter__(self) -> Backend:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def inputs(self) -> Mapping[str, InputMeta]:
        self.require_open()
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        self.require_open()
        return list(self._output_names)

    # -- input check ----------------------------------------------------------------------------
    def tensor_facts(self, value: Any) -> tuple[np.dtype[Any], tuple[int, ...]] | None:
        """(dtype, shape) of an input value this backend takes, or None for anything else. Numpy
        arrays here; a backend that keeps values on the device adds its own kind."""
        if isinstance(value, np.ndarray):
            return value.dtype, value.shape
        return None

    def check_inputs(self, feeds: Mapping[str, Any]) -> None:
        expected = self.inputs
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        if missing or extra:
            raise InvalidInputError(f"{self.path.name}: inputs {sorted(feeds)} do not match the graph's "
                                    f"{sorted(expected)} (missing {missing}, unexpected {extra})")
        for name, meta in expected.items():
            a = feeds[name]
            facts = self.tensor_facts(a)
            if facts is None:
                kinds = "a numpy array or a value of its to_device()" if self.keeps_outputs_on_device else "a numpy array"
                raise InvalidInputError(f"{self.path.name}: input '{name}' must be {kinds}, got {type(a).__name__}")
            dtype, shape = facts
            if dtype != meta.dtype:
                raise InvalidInputError(f"{self.path.name}: input '{name}' has dtype {dtype}, expected "
                                        f"{np.dtype(meta.dtype)}")
            if len(shape) != len(meta.shape):
                raise InvalidInputError(f"{self.path.name}: input '{name}' has rank {len(shape)} {shape}, expected "
                                        f"rank {len(meta.shape)} {meta.shape}")
            for i, (got, want) in enumerate(zip(shape, meta.shape, strict=True)):
                if isinstance(want, int) and want != got:
                    raise InvalidInputError(f"{self.path.name}: input '{name}' axis {i} is {got}, expected {want}")

    def _check(self, feeds: Mapping[str, Any], validate: bool) -> None:
        self.require_open()
        if validate or not self._checked:
            self.check_inputs(feeds)
            self._checked = True

    # -- running --------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray], validate: bool = True,
            token: CancelToken | None = None) -> dict[str, np.ndarray]:
        """Run the graph on numpy inputs; returns outputs by name. ``validate=False`` for hot loops
        whose inputs were validated once (the decoder's per-step state); the backend's first call is
        checked regardless. With ``token``, a cancelled stream's call raises
        :class:`StreamCancelledError` (before it starts, or while it runs)."""
        self._check(feeds, validate)
        return self._run(feeds, token)

    def run_keep(self, feeds: Mapping[str, Any], keep: frozenset[str] = frozenset(),
                 token: CancelToken | None = None, validate: bool = False) -> dict[str, Any]:
        """Like ``run``, but outputs named in ``keep`` may stay on the device (an opaque value to feed
        back as an input next time) where :attr:`keeps_outputs_on_device`; other backends return numpy
        for everything. Checked like ``run``: when ``validate``, and on the backend's first call."""
        self._check(feeds, validate)
        return self._run_keep(feeds, keep, token)

    def to_device(self, a: np.ndarray) -> Any:
        """``a`` as an input value ``run_keep`` takes in place (the array itself on host backends)."""
        return a

    def to_host(self, value: Any) -> np.ndarray:
        """A value ``run_keep`` returned (or ``to_device`` made) as a numpy array."""
        return np.asarray(value)

    @abstractmethod
    def _open(self) -> tuple[dict[str, InputMeta], list[str]]: ...

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray], token: CancelToken | None) -> dict[str, np.ndarray]: ...

    def _run_keep(self, feeds: Mapping[str, Any], keep: frozenset[str],
                  token: CancelToken | None) -> dict[str, Any]:
        return self._run(feeds, token)

    def _close(self) -> None:  # noqa: B027 - optional hook
        pass
