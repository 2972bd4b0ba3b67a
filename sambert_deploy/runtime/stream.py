"""A stream: one call's text -> audio, its state, its info, its cancellation.

:class:`Stream` is what :meth:`Synthesizer.stream` returns: an iterator (and async iterator) of
:class:`AudioChunk` with ``info``, ``cancel()`` and context-manager use. Its work runs as tasks on
the Synthesizer's shared :class:`~.scheduler.Scheduler`; nothing of it lives on the Synthesizer.

Per stream, in order: sentences from the source (the front end run block by block as the stream
needs them, or symbol lines) -> split at ``max_units`` -> encoded -> acoustic steps (one task = the
next postnet chunk of one sentence, planning the sentence first when it starts) -> mel cut into
vocoder windows, each tagged with its sentence and offsets -> window tasks (any number at once:
each carries its whole context) -> chunks handed to the consumer in order. Back-pressure: no new
acoustic work while ``max_ahead`` windows are waiting, running or unconsumed, so an abandoned or
slow consumer holds a bounded amount of memory and no CPU.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import InvalidInputError, StreamCancelledError
from ..symbols import EncodedUnits, Unit, encode_units, with_voice
from .backends import CancelToken
from .chunking import Window, WindowCutter

if TYPE_CHECKING:
    from .acoustic import AcousticModel, SentenceAcoustic
    from .scheduler import Scheduler, Task
    from .vocoder import Vocoder

log = logging.getLogger(__name__)

# Text read ahead of the front end from an iterable source (stdin): bounded so a 1 MB pipe does not
# sit in memory, large enough that the reader never starves the front end.
MAX_PENDING_CHARS = 16_384


@dataclass(frozen=True)
class AudioChunk:
    """A piece of the stream. ``samples`` float32 mono in (-1, 1)."""

    samples: np.ndarray
    sample_rate: int
    sentence: int  # index of the sentence this chunk belongs to
    offset: int  # first sample's index in the whole stream
    sentence_offset: int  # first sample's index inside its sentence
    final: bool  # last chunk of its sentence

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


class UnitSource(Protocol):
    """Sentences of typed units, fed text in pieces (the front end's SentenceReader, or symbol lines)."""

    def feed(self, piece: str) -> None: ...

    def finish(self) -> None: ...

    def next_sentence(self) -> list[Unit] | None: ...

    @property
    def done(self) -> bool: ...

    @property
    def pending_chars(self) -> int: ...


@dataclass(frozen=True)
class StreamPlan:
    """Everything a stream's tasks need, resolved and validated by the Synthesizer before it starts."""

    voice: str
    am: AcousticModel
    voc: Vocoder
    am_lane: str
    voc_lane: str
    sample_rate: int
    hop: int
    inventories: Any
    emotion: str | None  # applied to symbol input (the front end writes it into text input itself)
    speaker: str | None
    duration_scale: float
    postnet_chunk: int
    vocoder_chunk: int
    first_chunk: int
    kv_block: int
    max_units: int | None
    max_ahead: int
    override_units: bool  # symbol input: apply emotion/speaker to the units


@dataclass
class _Job:
    seq: int
    sentence: int
    offset: int  # in the stream, samples
    sentence_offset: int
    window: Window


@dataclass
class _AcousticOut:
    jobs: list[tuple[int, int, Window]] = field(default_factory=list)  # (sentence, sentence start sample, window)
    frames: int = 0
    sentences: int = 0
    units: int = 0
    planned_frames: int = 0
    frontend_s: float = 0.0
    acoustic_s: float = 0.0
    need_input: bool = False
    input_done: bool = False


class StreamState:
    """The scheduler's client for one stream. Fields below ``# acoustic-owned`` are touched only by the
    stream's single acoustic task (never two at once); everything else only under the scheduler lock."""

    def __init__(self, scheduler: Scheduler, plan: StreamPlan, source: UnitSource, t0: float):
        self.sched, self.plan, self.source, self.t0 = scheduler, plan, source, t0
        self.token = CancelToken()
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
        self.produced_frames = 0
        self.ready: deque[_Job] = deque()
        self.running_windows = 0
        self.results: dict[int, AudioChunk] = {}
        self.next_seq = 0
        self.next_out = 0
        self.async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # info
        self.sentences = self.units = self.frames = self.samples = 0
        self.first_audio_s: float | None = None
        self.end_s: float | None = None
        self.frontend_s = self.acoustic_s = self.vocoder_s = 0.0
        # acoustic-owned
        self._pending: deque[EncodedUnits] = deque()
        self._sentence: SentenceAcoustic | None = None
        self._voc_cut: WindowCutter | None = None
        self._sentence_index = -1
        self._sentence_start = 0  # stream sample offset of the current sentence
        self._stream_frames = 0
        self._sentence_count = 0
        # The small first vocoder window buys latency when a listener is waiting: the stream's first
        # sentence, or one that had to wait for input. Later sentences are computed ahead of playback,
        # where it would only add context overhead (59 frames computed for 24, against 291 for 256).
        self._listener_waiting = True

    # -- scheduler side (lock held) --------------------------------------------------------------
    @property
    def defunct(self) -> bool:
        if self.abandoned and self.state == "running":
            self._stop("cancelled", None)
        return self.state != "running"

    def _outstanding(self) -> int:
        return len(self.ready) + self.running_windows + len(self.results)

    def offer(self, lane: str) -> Task | None:
        from .scheduler import Task

        p = self.plan
        if self.state != "running" or self.error is not None:
            return None
        if lane == p.voc_lane and self.ready:
            job = self.ready[0]
            return Task(self, lane, "window", self.t0 + job.offset / p.sample_rate, (self.order, job.seq),
                        self._window_fn(job), {"job": job})
        if (lane == p.am_lane and not self.acoustic_busy and not self.acoustic_done and not self.waiting_input
                and self._outstanding() < p.max_ahead):
            deadline = self.t0 + self.produced_frames * p.hop / p.sample_rate
            return Task(self, lane, "acoustic", deadline, (self.order, -1), self._acoustic_step,
                        {"version": self.input_version})
        return None

    def start(self, task: Task) -> None:
        if task.kind == "window":
            self.ready.popleft()
            self.running_windows += 1
        else:
            self.acoustic_busy = True

    def finish(self, task: Task, result: Any, error: BaseException | None) -> None:
        if task.kind == "window":
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
        if task.kind == "window":
            job: _Job = task.meta["job"]
            audio, seconds = result
            self.vocoder_s += seconds
            self.results[job.seq] = AudioChunk(np.ascontiguousarray(audio, np.float32), self.plan.sample_rate,
                                               job.sentence, job.offset, job.sentence_offset, job.window.last)
            if self.first_audio_s is None and job.seq == 0:
                self.first_audio_s = time.perf_counter() - self.t0
        else:
            out: _AcousticOut = result
            self.frontend_s += out.frontend_s
            self.acoustic_s += out.acoustic_s
            self.sentences += out.sentences
            self.units += out.units
            self.frames += out.planned_frames
            self.produced_frames += out.frames
            hop = self.plan.hop
            for sentence, start, win in out.jobs:
                self.ready.append(_Job(self.next_seq, sentence, start + win.start * hop, win.start * hop, win))
                self.next_seq += 1
            if out.need_input and self.input_version == task.meta["version"]:
                self.waiting_input = True
            if out.input_done:
                self.acoustic_done = True

    # -- the tasks (no lock) -----------------------------------------------------------------------
    def _window_fn(self, job: _Job) -> Any:
        def run() -> tuple[np.ndarray, float]:
            t = time.perf_counter()
            audio = self.plan.voc.window(job.window, self.token, validate=job.seq == 0)
            return audio, time.perf_counter() - t
        return run

    def _acoustic_step(self) -> _AcousticOut:
        """Plan the next sentence if none is running (front end first if needed), then produce the
        current sentence's next postnet chunk and cut what vocoder windows it completes."""
        p, out = self.plan, _AcousticOut()
        while self._sentence is None:
            if not self._pending:
                t = time.perf_counter()
                units = self.source.next_sentence()
                out.frontend_s += time.perf_counter() - t
                if units is None:
                    if self.source.done:
                        if self._sentence_count == 0:
                            raise InvalidInputError("nothing to synthesize: the input has no speakable text or "
                                                    "symbol units", param="input")
                        out.input_done = True
                    else:
                        out.need_input = True
                        self._listener_waiting = True
                    return out
                self._queue(units)
                continue
            encoded = self._pending.popleft()
            t = time.perf_counter()
            sentence_plan = p.am.plan(encoded, duration_scale=p.duration_scale, token=self.token)
            out.acoustic_s += time.perf_counter() - t
            index = self._sentence_count
            self._sentence_count += 1
            out.sentences += 1
            out.units += encoded.num_units
            out.planned_frames += sentence_plan.valid_frames
            if sentence_plan.valid_frames == 0:
                log.warning("sentence %d produced no frames (all durations round to 0)", index)
                continue
            # Where a listener waits, the first postnet chunk is just the first vocoder window: the
            # first audio then waits for 16 frames of decoder steps and postnet, not 48.
            first = min(p.first_chunk, p.postnet_chunk) if self._listener_waiting else None
            self._sentence = p.am.sentence(sentence_plan, p.postnet_chunk, p.kv_block, first)
            ctx = p.voc.info
            self._voc_cut = WindowCutter(sentence_plan.valid_frames, p.vocoder_chunk, ctx.context_left,
                                         ctx.context_right, p.first_chunk if self._listener_waiting else None)
            self._listener_waiting = False
            self._sentence_index = index
            self._sentence_start = self._stream_frames * p.hop
            self._stream_frames += sentence_plan.valid_frames
        t = time.perf_counter()
        mel = self._sentence.next_block(self.token)
        out.acoustic_s += time.perf_counter() - t
        out.frames += mel.shape[0]
        cut = self._voc_cut
        if cut is None:  # set together with _sentence
            raise RuntimeError("vocoder cutter missing")
        cut.push(mel)
        while (win := cut.pop()) is not None:
            out.jobs.append((self._sentence_index, self._sentence_start, win))
        if self._sentence.finished:
            self._sentence = None
            self._voc_cut = None
        return out

    def _queue(self, units: list[Unit]) -> None:
        from ..frontend import split_units

        p = self.plan
        if p.override_units:
            units = with_voice(units, p.emotion, p.speaker)
        pieces = split_units(units, p.max_units) if p.max_units and len(units) > p.max_units else [units]
        for piece in pieces:
            if piece:
                try:
                    self._pending.append(encode_units(piece, p.inventories))
                except InvalidInputError as e:
                    where = getattr(self.source, "where", None)  # symbol lines say which line
                    if where is None:
                        raise
                    raise InvalidInputError(f"{where()}: {e}") from None

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
        if self.acoustic_done and not self.acoustic_busy and self.next_out == self.next_seq:
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

    def input_changed(self) -> None:
        """The source got text or was finished (lock held)."""
        self.input_version += 1
        self.waiting_input = False
        self.sched.wake()

    def info(self) -> StreamInfo:
        with self.cv:
            elapsed = self.end_s if self.end_s is not None else time.perf_counter() - self.t0
            return StreamInfo(self.plan.voice, self.plan.sample_rate, self.state, self.sentences, self.units,
                              self.frames, self.samples, self.first_audio_s, elapsed, self.frontend_s,
                              self.acoustic_s, self.vocoder_s)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def read_input(state: StreamState, pieces: Iterable[str]) -> None:
    """Feed an iterable text source (stdin, a generator) into the stream, in its own thread: reading
    may block on I/O, which must never hold a scheduler worker. Reads ahead at most
    ``MAX_PENDING_CHARS`` beyond what the front end has taken, except while the stream waits for more
    input (a sentence longer than that must still arrive whole)."""
    it = iter(pieces)

    def stopped() -> bool:
        return state.state != "running" or state.error is not None or state.token.cancelled

    end = object()
    try:
        while not stopped():
            piece = next(it, end)
            if piece is end:
                state.source.finish()
                break
            if stopped():
                break
            if not isinstance(piece, str):
                raise InvalidInputError(f"text pieces must be str, got {type(piece).__name__}")
            state.source.feed(piece)
            with state.cv:
                state.input_changed()
                while state.source.pending_chars > MAX_PENDING_CHARS and not state.waiting_input and not stopped():
                    state.cv.wait()  # woken when the acoustic step takes text or waits for it, or the stream ends
    except BaseException as e:  # a failing source fails the stream, reported to its consumer
        with state.cv:
            state.fail(e)
    finally:
        try:
            # Only a generator is ours to close (it stops now, in this thread); a file object the
            # caller passed stays open: it is theirs.
            if inspect.isgenerator(it):
                it.close()
        except BaseException as e:  # noqa: BLE001 - reported to the consumer
            with state.cv:
                state.fail(e)
        finally:
            with state.cv:
                state.input_changed()


class Stream:
    """Audio of one ``Synthesizer.stream()`` call: iterate it (or ``async for``) for :class:`AudioChunk`;
    ``info`` any time; ``cancel()``/``close()`` or leaving a ``with`` block stops its work at once.

    An abandoned stream (dropped without closing) holds no thread and stops using CPU once
    ``max_ahead`` windows are waiting; when it is garbage-collected its work is dropped.
    """

    def __init__(self, state: StreamState):
        import weakref

        self._state = state
        weakref.finalize(self, state.abandon).atexit = False  # at exit daemon workers just stop

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> AudioChunk:
        return self._state.next_chunk()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> AudioChunk:
        """Waits without blocking the event loop (a worker resolves a future when something changes)."""
        state = self._state
        loop = asyncio.get_running_loop()
        while True:
            with state.cv:
                try:
                    chunk = state.poll()
                except StopIteration:
                    raise StopAsyncIteration from None
                if chunk is not None:
                    return chunk
                fut: asyncio.Future[None] = loop.create_future()
                # a waiter cancelled by its caller (asyncio.wait_for) leaves a done future behind
                state.async_waiters = [(lp, f) for lp, f in state.async_waiters if not f.done()]
                state.async_waiters.append((loop, fut))
            await fut

    @property
    def info(self) -> StreamInfo:
        return self._state.info()

    def cancel(self) -> None:
        self._state.cancel()

    def close(self) -> None:
        self.cancel()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def aclose(self) -> None:
        self.close()
