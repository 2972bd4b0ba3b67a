"""The scheduler's client for one stream: its locked queues and results, nothing of the acoustic side.

A stream's work is two kinds of task on the Synthesizer's shared :class:`~.scheduler.Scheduler`: the
acoustic step (one at a time: :meth:`~.cursor.AcousticCursor.step`, which owns all acoustic-side
state; offered under the voice's :class:`~.batching.DecodeGroup` when it starts with decoder steps, so
the scheduler can run those batched with other streams') and vocoder windows (any number at once:
each :class:`~.cursor.VocoderJob` carries its whole context). :class:`StreamState` holds what crosses the lock: the jobs ready to run, the chunks done and
not yet consumed, the last published :class:`~.cursor.Progress`, and how the stream ended.
Back-pressure: no new acoustic work while ``max_ahead`` windows are waiting, running or unconsumed, so
an abandoned or slow consumer holds a bounded amount of memory and no CPU.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StreamCancelledError
from .backends import CancelToken
from .chunking import Window
from .cursor import AcousticCursor, AcousticStep, Progress, UnitSource, VocoderJob, VoiceWork
from .scheduler import Task
from .timestamps import Mark

if TYPE_CHECKING:
    from .scheduler import Scheduler


@dataclass(frozen=True)
class AudioChunk:
    """A piece of the stream. ``samples`` float32 mono in (-1, 1)."""

    samples: np.ndarray
    sample_rate: int
    sentence: int  # index of the sentence this chunk belongs to
    offset: int  # first sample's index in the whole stream
    sentence_offset: int  # first sample's index inside its sentence
    final: bool  # last chunk of its sentence
    # The timestamps of the syllables, words and breaks that START in this chunk (the sentence's last
    # chunk also carries any zero-length ones at its end): see timestamps.py.
    marks: tuple[Mark, ...] = ()

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    def int16(self) -> np.ndarray:
        """PCM16 the way ModelScope converts (x * 32768, cast), clipped so +1.0 cannot wrap."""
        return np.clip(self.samples * 32768.0, -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class StreamInfo:
    """A snapshot of one stream. Times in seconds from the ``stream()`` call (front end included);
    ``*_busy_s`` add up task time (windows that ran at once count each), so they can exceed ``elapsed_s``."""

    voice: str
    sample_rate: int
    state: str  # running | done | cancelled | failed
    sentences: int
    units: int
    frames: int
    samples: int
    first_audio_s: float | None
    elapsed_s: float
    frontend_busy_s: float
    acoustic_busy_s: float
    vocoder_busy_s: float

    @property
    def audio_s(self) -> float:
        return self.samples / self.sample_rate

    @property
    def rtf(self) -> float | None:
        return self.elapsed_s / self.audio_s if self.samples else None


@dataclass(frozen=True)
class StreamPlan:
    """A stream's fixed facts, resolved and validated by the Synthesizer before it starts."""

    voice: str
    work: VoiceWork
    am_lane: str
    voc_lane: str
    sample_rate: int
    max_ahead: int


@dataclass(frozen=True)
class AcousticTask:
    """The payload of an acoustic step: the input version it was offered at (a step that found no
    complete sentence waits for input only if no text arrived meanwhile), and the cursor a
    :class:`~.batching.DecodeGroup` drives when the step starts with decoder steps."""

    input_version: int
    member: AcousticCursor


@dataclass(frozen=True)
class WindowTask:
    """The payload of a vocoder window: the job, and what a :class:`~.batching.VocoderGroup` needs to run
    it with other streams' windows (:class:`~.batching.WindowMember`)."""

    job: VocoderJob
    token: CancelToken

    @property
    def window(self) -> Window:
        return self.job.window

    @property
    def validate(self) -> bool:
        return self.job.seq == 0  # a stream's first window checks its inputs; the rest are built alike


class StreamState:
    """Everything below is touched only under the scheduler lock, except ``cursor`` (the acoustic task's,
    one at a time) and ``source`` (its own lock)."""

    def __init__(self, scheduler: Scheduler, plan: StreamPlan, source: UnitSource, t0: float):
        self.sched, self.plan, self.source, self.t0 = scheduler, plan, source, t0
        self.token = CancelToken()
        self.cursor = AcousticCursor(plan.work, source, self.token)
        self.cv = scheduler.condition()
        self.order = 0  # tie-break between streams with equal deadlines: older first
        self.state = "running"
        self.error: BaseException | None = None
        self.error_reported = False
        self.abandoned = False
        self.input_version = 0
        self.waiting_input = False
        self.acoustic_busy = False
        self.acoustic_done = False
        self.progress = Progress()
        self.ready: deque[VocoderJob] = deque()
        self.running_windows = 0
        self.results: dict[int, AudioChunk] = {}
        self.next_out = 0
        self.async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.samples = 0
        self.first_audio_s: float | None = None
        self.end_s: float | None = None
        self.vocoder_s = 0.0

    # -- scheduler side (lock held) --------------------------------------------------------------
    @property
    def defunct(self) -> bool:
        if self.abandoned and self.state == "running":
            self._stop("cancelled", None)
        return self.state != "running"

    @property
    def outstanding(self) -> int:
        """Windows waiting, running or done and not yet consumed."""
        return len(self.ready) + self.running_windows + len(self.results)

    def offer(self, lane: str) -> Task | None:
        p = self.plan
        if self.state != "running" or self.error is not None:
            return None
        if lane == p.voc_lane and self.ready:
            job = self.ready[0]
            work = WindowTask(job, self.token)
            return Task(self, lane, self.t0 + job.offset / p.sample_rate, (self.order, job.seq),
                        self._window_fn(work), work, p.work.voc.group)
        if (lane == p.am_lane and not self.acoustic_busy and not self.acoustic_done and not self.waiting_input
                and self.outstanding < p.max_ahead):
            deadline = self.t0 + self.progress.produced_frames * p.work.hop / p.sample_rate
            group = p.work.am.decode_group if self.cursor.needs_step() else None
            return Task(self, lane, deadline, (self.order, -1), self.cursor.step,
                        AcousticTask(self.input_version, self.cursor), group)
        return None

    def start(self, task: Task) -> None:
        if isinstance(task.payload, WindowTask):
            self.ready.popleft()
            self.running_windows += 1
        else:
            self.acoustic_busy = True

    def finish(self, task: Task, result: Any, error: BaseException | None) -> None:
        if isinstance(task.payload, WindowTask):
            self.running_windows -= 1
        else:
            self.acoustic_busy = False
        try:
            self._apply(task, result, error)
        except Exception as e:  # e.g. MemoryError building a chunk: the consumer must hear of it
            self.fail(e)
        self._notify()

    def fail(self, error: BaseException) -> None:
        """The scheduler could not run or book one of this stream's tasks (lock held)."""
        self._fail(error)
        self._notify()

    def _apply(self, task: Task, result: Any, error: BaseException | None) -> None:
        if error is not None:
            if not isinstance(error, StreamCancelledError):
                self._fail(error)
            return
        if self.state != "running" or self.error is not None:
            return
        payload = task.payload
        if isinstance(payload, WindowTask):
            job = payload.job
            audio, seconds = result
            self.vocoder_s += seconds
            self.results[job.seq] = AudioChunk(np.ascontiguousarray(audio, np.float32), self.plan.sample_rate,
                                               job.sentence, job.offset, job.sentence_offset, job.window.last,
                                               job.marks)
            if self.first_audio_s is None and job.seq == 0:
                self.first_audio_s = time.perf_counter() - self.t0
            return
        step: AcousticStep = result
        self.progress = step.progress
        self.ready.extend(step.jobs)
        if step.need_input and isinstance(payload, AcousticTask) and self.input_version == payload.input_version:
            self.waiting_input = True
        if step.input_done:
            self.acoustic_done = True

    # -- the window task (no lock) -----------------------------------------------------------------
    def _window_fn(self, work: WindowTask) -> Any:
        def run() -> tuple[np.ndarray, float]:
            t = time.perf_counter()
            audio = self.plan.work.voc.window(work.window, work.token, validate=work.validate)
            return audio, time.perf_counter() - t
        return run

    # -- consumer side ---------------------------------------------------------------------------
    def _notify(self) -> None:
        self.cv.notify_all()
        for loop, fut in self.async_waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that event loop is closed: nobody is waiting any more
                pass
        self.async_waiters.clear()

    def _fail(self, error: BaseException) -> None:
        if self.error is None and self.state == "running":
            self.error = error
            self.ready.clear()
            self.results.clear()
            self.token.cancel()

    def _stop(self, state: str, error: BaseException | None) -> bool:
        """End the stream (lock held): drop queued work, stop running graph calls, wake everyone
        (consumer, input reader, async waiters). The one way a stream ends; False if it had ended."""
        if self.state != "running":
            return False
        self.state = state
        if error is not None and self.error is None:  # an error already waiting for the consumer wins
            self.error = error
        self.end_s = time.perf_counter() - self.t0
        self.ready.clear()
        self.results.clear()
        self.sched.remove(self)
        self.token.cancel()
        self._notify()
        return True

    def poll(self) -> AudioChunk | None:
        """The next chunk if ready, None if not yet; raises StopIteration at the end or the stream's
        error (lock held)."""
        if self.error is not None:
            self._stop("failed", None)
            if not self.error_reported:
                self.error_reported = True
                raise self.error
            raise StopIteration
        if self.state != "running":
            raise StopIteration
        chunk = self.results.pop(self.next_out, None)
        if chunk is not None:
            self.next_out += 1
            self.samples += len(chunk.samples)
            self.sched.wake()  # room under max_ahead: the acoustic step may run again
            return chunk
        if self.acoustic_done and not self.acoustic_busy and self.next_out == self.progress.jobs:
            self._stop("done", None)
            raise StopIteration
        return None

    def next_chunk(self) -> AudioChunk:
        with self.cv:
            while True:
                chunk = self.poll()
                if chunk is not None:
                    return chunk
                self.cv.wait()

    def add_waiter(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future resolved when something changes (lock held)."""
        fut: asyncio.Future[None] = loop.create_future()
        # a waiter cancelled by its caller (asyncio.wait_for) leaves a done future behind
        self.async_waiters = [(lp, f) for lp, f in self.async_waiters if not f.done()]
        self.async_waiters.append((loop, fut))
        return fut

    def cancel(self, error: BaseException | None = None) -> None:
        """Stop the stream now; never waits for running work (its graph calls are told to stop)."""
        with self.cv:
            if self._stop("failed" if error is not None else "cancelled", error) and error is None:
                self.error_reported = True  # the caller stopped it: nothing to raise

    def abandon(self) -> None:
        """From the Stream's finalizer, in whatever thread the collector runs (maybe a worker holding
        the scheduler's lock, so no lock is taken here): a short-lived thread ends the stream."""
        self.abandoned = True
        self.token.cancel()
        threading.Thread(target=self.cancel, name="sambert-finalize", daemon=True).start()

    @property
    def stopped(self) -> bool:
        return self.state != "running" or self.error is not None or self.token.cancelled

    def input_changed(self) -> None:
        """The source got text or was finished (lock held)."""
        self.input_version += 1
        self.waiting_input = False
        self.sched.wake()

    def info(self) -> StreamInfo:
        with self.cv:
            elapsed = self.end_s if self.end_s is not None else time.perf_counter() - self.t0
            p = self.progress
            return StreamInfo(self.plan.voice, self.plan.sample_rate, self.state, p.sentences, p.units, p.frames,
                              self.samples, self.first_audio_s, elapsed, p.frontend_s, p.acoustic_s, self.vocoder_s)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
