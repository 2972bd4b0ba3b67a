"""Decoder steps (and vocoder windows) of several streams of one voice as one graph call (continuous batching).

The decoder step is launch-bound: one call costs ONNX Runtime's per-node overhead more than its
arithmetic (0.65 ms for one stream, 1.69 ms for four, 2.67 ms for eight on one core here:
scripts/bench_decoder_batch.py). :func:`run_steps` runs the steps of any set of
streams in one call of the ``decoder_step`` graph's batch axis; :class:`DecodeGroup` is what the
scheduler hands the acoustic steps of a voice's streams to when several are ready at once
(:meth:`~.scheduler.Scheduler` groups tasks that name the same group).

Streams differ in their window widths (each sentence has its own band): narrower windows are padded
at their far end with zero keys/values and masked slots. exp(MASK_VALUE - max) is exactly 0, so a
padded row computes the same attention; only the summation grouping of ONNX Runtime's kernels may
change with the padded length (measured: at most 1 ulp per step on single steps; whole streams of the
demo voice came out bit-identical to each stream alone, and tests/test_batching.py holds them to 1e-5).

Bundles exported before the batch axis (``x_bias`` of rank 1, window oldest first) still run, one
call per stream, through the same records.

:class:`VocoderGroup` does the same for vocoder windows, one call for the windows that are ready
together (no steps to join between). It pays only where a call is launch-bound: on a CPU the vocoder's
convolutions are compute-bound and one batched call costs what the single calls do (README), so the
runtime groups windows only where asked or where a GPU tier says so (placement.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..errors import StreamCancelledError

if TYPE_CHECKING:
    from .backends import Backend, CancelToken
    from .chunking import Window
    from .scheduler import Task
    from .vocoder import Vocoder

log = logging.getLogger(__name__)

MASK_VALUE = np.float32(-1e9)  # additive mask; exp() underflows to exactly 0 like -inf
# Streams per decoder call on a CPU: 8 at 2.67 ms against 8 x 0.65 ms alone (one thread, full-size
# voice); the GPU memory tiers set their own (placement.py).
DEFAULT_MAX_BATCH = 8


@dataclass
class StepInput:
    """One stream's decoder step, batch axis of 1: prev [1,1,M], memory_i [1,1,D], x_k/x_v [1,L,H,wx,dh]
    (newest first; numpy or a device value of the backend), x_bias [1,wx+1] (slot 0 = this step),
    h_k/h_v [1,L,H,wh,dh], h_bias [1,wh]."""

    prev: np.ndarray
    memory_i: np.ndarray
    x_k: Any
    x_v: Any
    x_bias: np.ndarray
    h_k: np.ndarray
    h_v: np.ndarray
    h_bias: np.ndarray
    validate: bool = False

    def feeds(self) -> dict[str, Any]:
        return {"prev": self.prev, "memory_i": self.memory_i, "x_k": self.x_k, "x_v": self.x_v,
                "x_bias": self.x_bias, "h_k": self.h_k, "h_v": self.h_v, "h_bias": self.h_bias}


@dataclass
class StepOutput:
    """frames f32 [r*M]; x_k/x_v: the stream's window after the step, as its next StepInput takes it."""

    frames: np.ndarray
    x_k: Any
    x_v: Any


KEEP = frozenset({"x_k_out", "x_v_out"})


def batched(session: Backend) -> bool:
    """Whether the voice's decoder step graph has the batch axis (bundles exported before it do not)."""
    return len(session.inputs["x_bias"].shape) == 2


def run_steps(session: Backend, steps: Sequence[StepInput], token: CancelToken | None = None) -> list[StepOutput]:
    """One decoder step of each of ``steps`` (streams of one voice), as one call where the graph has a
    batch axis. A single step keeps its window on the device where the backend can (I/O binding)."""
    if not batched(session):
        return [_legacy_step(session, s, token) for s in steps]
    if len(steps) == 1:
        s = steps[0]
        keep = KEEP if session.keeps_outputs_on_device else frozenset()
        res = session.run_keep(s.feeds(), keep, token, validate=s.validate)
        return [StepOutput(res["frames"][0, 0], res["x_k_out"], res["x_v_out"])]
    xw = [int(s.x_bias.shape[1]) - 1 for s in steps]
    hw = [int(s.h_bias.shape[1]) for s in steps]
    feeds = {"prev": np.concatenate([s.prev for s in steps]),
             "memory_i": np.concatenate([s.memory_i for s in steps]),
             "x_k": _pad([session.to_host(s.x_k) for s in steps], xw), "x_v": _pad([session.to_host(s.x_v) for s in steps], xw),
             "x_bias": _pad_bias([s.x_bias for s in steps]),
             "h_k": _pad([s.h_k for s in steps], hw), "h_v": _pad([s.h_v for s in steps], hw),
             "h_bias": _pad_bias([s.h_bias for s in steps])}
    res = session.run(feeds, validate=any(s.validate for s in steps))
    xk, xv, frames = res["x_k_out"], res["x_v_out"], res["frames"]
    return [StepOutput(frames[b, 0], _row(xk, b, w), _row(xv, b, w)) for b, w in enumerate(xw)]


def _pad(windows: list[np.ndarray], widths: list[int]) -> np.ndarray:
    """[1,L,H,w_b,dh] each -> [B,L,H,max w,dh], zero keys/values beyond each stream's width."""
    w = max(widths)
    if all(x == w for x in widths):
        return np.concatenate(windows)
    first = windows[0]
    out = np.zeros((len(windows), *first.shape[1:3], w, first.shape[4]), np.float32)
    for b, (a, n) in enumerate(zip(windows, widths, strict=True)):
        out[b, :, :, :n] = a[0]
    return out


def _pad_bias(biases: list[np.ndarray]) -> np.ndarray:
    w = max(int(b.shape[1]) for b in biases)
    out = np.full((len(biases), w), MASK_VALUE, np.float32)
    for i, b in enumerate(biases):
        out[i, :b.shape[1]] = b[0]
    return out


def _row(a: np.ndarray, b: int, width: int) -> np.ndarray:
    return np.ascontiguousarray(a[b:b + 1, :, :, :width])


def _legacy_step(session: Backend, s: StepInput, token: CancelToken | None) -> StepOutput:
    """A graph without the batch axis keeps its x window oldest first and takes rank-4 states."""
    def flip(a: Any) -> np.ndarray:
        return np.ascontiguousarray(session.to_host(a)[0, :, :, ::-1])
    res = session.run({"prev": s.prev, "memory_i": s.memory_i, "x_k": flip(s.x_k), "x_v": flip(s.x_v),
                       "x_bias": np.ascontiguousarray(s.x_bias[0, ::-1]), "h_k": s.h_k[0], "h_v": s.h_v[0],
                       "h_bias": s.h_bias[0]}, validate=s.validate, token=token)
    return StepOutput(res["frames"][0, 0], np.ascontiguousarray(res["x_k_out"][None, :, :, ::-1]),
                      np.ascontiguousarray(res["x_v_out"][None, :, :, ::-1]))


# -- the scheduler's side ----------------------------------------------------------------------------------


@runtime_checkable
class Member(Protocol):
    """What :class:`DecodeGroup` needs of one stream's acoustic step (the cursor implements it)."""

    token: CancelToken

    def needs_step(self) -> bool:
        """Whether the stream's next postnet chunk needs another decoder step first."""

    def step_input(self) -> StepInput: ...

    def take_step(self, out: StepOutput, seconds: float) -> None: ...

    def step(self) -> Any:
        """The stream's acoustic step once its decoder steps are done (postnet, vocoder windows)."""


Report = Callable[["Task", Any, "BaseException | None"], None]
Pull = Callable[[int], "list[Task]"]


@dataclass(eq=False)
class DecodeGroup:
    """The acoustic steps of a voice's streams that are ready together, run as one: decoder steps in
    one call per step for every stream that still needs one; a stream leaves as soon as its postnet
    chunk can run (its vocoder windows go out at once) and others join between steps (``pull``)."""

    session: Backend
    max_batch: int = DEFAULT_MAX_BATCH
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _calls: int = 0
    _steps: int = 0
    pulls: ClassVar[bool] = True  # streams join between steps

    def counts(self) -> tuple[int, int]:
        """(decoder calls, stream steps they ran) so far: steps / calls is the mean batch."""
        with self._lock:
            return self._calls, self._steps

    def run(self, tasks: list[Task], pull: Pull, report: Report) -> None:
        members: list[tuple[Task, Member]] = [(t, _member(t)) for t in tasks]
        while members:
            still: list[tuple[Task, Member]] = []
            for task, m in members:
                try:
                    if m.token.cancelled:
                        raise StreamCancelledError("stream cancelled")
                    if m.needs_step():
                        still.append((task, m))
                        continue
                    result = m.step()
                except BaseException as e:  # noqa: BLE001 - handed to that stream alone
                    report(task, None, e)
                else:
                    report(task, result, None)
            members = still
            if not members:
                return
            # Each stepping stream is booked an equal share of the whole step: the pull, every stream's
            # inputs (the memory's keys/values when a block of them is due) and the call.
            t0 = time.perf_counter()
            if len(members) < self.max_batch:
                members += [(t, _member(t)) for t in pull(self.max_batch - len(members))]
            stepping: list[tuple[Task, Member, StepInput]] = []
            for task, m in members:
                try:
                    stepping.append((task, m, m.step_input()))
                except BaseException as e:  # noqa: BLE001
                    report(task, None, e)
            if not stepping:
                return
            try:
                outs = run_steps(self.session, [s for _, _, s in stepping],
                                 stepping[0][1].token if len(stepping) == 1 else None)
            except BaseException as e:  # noqa: BLE001 - a failed call fails every stream in it
                for task, _, _ in stepping:
                    report(task, None, e)
                return
            share = (time.perf_counter() - t0) / len(stepping)
            with self._lock:
                self._calls += 1 if batched(self.session) else len(stepping)
                self._steps += len(stepping)
            members = []
            for (task, m, _), out in zip(stepping, outs, strict=True):
                try:
                    m.take_step(out, share)
                except BaseException as e:  # noqa: BLE001
                    report(task, None, e)
                else:
                    members.append((task, m))


def _member(task: Task) -> Member:
    m = getattr(task.payload, "member", None)
    if not isinstance(m, Member):
        raise TypeError(f"a decode group task carries {type(task.payload).__name__}, not a batching Member")
    return m


@runtime_checkable
class WindowMember(Protocol):
    """What :class:`VocoderGroup` needs of one stream's vocoder window (state.py's task payload)."""

    window: Window
    token: CancelToken
    validate: bool


@dataclass(eq=False)
class VocoderGroup:
    """Vocoder windows of a voice's streams that are ready together, run as one call of the vocoder's
    batch axis (:meth:`~.vocoder.Vocoder.windows`); each task's result is ``(audio, seconds)``, its
    seconds an equal share of the call. A stream cancelled before the call leaves it; one cancelled
    during it is not stopped (the others need the call) and its audio is dropped by its stream."""

    vocoder: Vocoder
    max_batch: int
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _calls: int = 0
    _windows: int = 0
    pulls: ClassVar[bool] = False  # one call: a window ready after it started goes to the next one

    def counts(self) -> tuple[int, int]:
        """(vocoder calls, windows they ran) so far."""
        with self._lock:
            return self._calls, self._windows

    def run(self, tasks: list[Task], pull: Pull, report: Report) -> None:
        live: list[tuple[Task, WindowMember]] = []
        for task in tasks:
            m = task.payload
            if not isinstance(m, WindowMember):
                report(task, None, TypeError(f"a vocoder group task carries {type(m).__name__}, not a window"))
            elif m.token.cancelled:
                report(task, None, StreamCancelledError("stream cancelled"))
            else:
                live.append((task, m))
        if not live:
            return
        t0 = time.perf_counter()
        try:
            audio = self.vocoder.windows([m.window for _, m in live], live[0][1].token if len(live) == 1 else None,
                                         validate=any(m.validate for _, m in live))
        except BaseException as e:  # noqa: BLE001 - a failed call fails every stream in it
            for task, _ in live:
                report(task, None, e)
            return
        share = (time.perf_counter() - t0) / len(live)
        with self._lock:
            self._calls += 1
            self._windows += len(live)
        for (task, _), a in zip(live, audio, strict=True):
            report(task, (a, share), None)
