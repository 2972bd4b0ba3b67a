"""The acoustic side of one stream: sentences in, typed vocoder jobs out.

:class:`AcousticCursor` owns every piece of acoustic-side state of a stream (the sentences taken from
the source and not yet planned, the running :class:`SentenceCursor`, the counters) and is advanced by
one task at a time, so it needs no lock. Each :meth:`AcousticCursor.step` returns an immutable
:class:`AcousticStep`: the vocoder jobs it completed and a cumulative :class:`Progress` snapshot, which
the stream's locked state publishes as they are (counters live here once, never copied).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from ..errors import InvalidInputError
from ..symbols import (
    EncodedUnits,
    Inventories,
    Token,
    Unit,
    encode_units,
    split_tokens,
    split_units,
    with_voice,
)
from .chunking import Window, WindowCutter
from .timestamps import Mark, sentence_marks

if TYPE_CHECKING:
    from .acoustic import AcousticModel, SentenceAcoustic
    from .backends import CancelToken
    from .batching import StepInput, StepOutput
    from .placement import StreamOptions
    from .vocoder import Vocoder

log = logging.getLogger(__name__)


class UnitSource(Protocol):
    """Sentences of typed units, fed text in pieces (the front end's SentenceReader, or symbol lines)."""

    def feed(self, piece: str) -> None: ...

    def finish(self) -> None: ...

    def next_sentence(self) -> list[Unit] | None: ...

    def where(self) -> str | None:
        """Where the sentence last returned came from (``symbol line 12``), for errors found later."""

    def tokens(self) -> tuple[Token, ...]:
        """What the units of the sentence last returned speak (for its timestamps)."""

    @property
    def done(self) -> bool: ...

    @property
    def pending_chars(self) -> int: ...


@dataclass(frozen=True)
class VocoderJob:
    """One vocoder window of a stream: ``seq`` orders the chunks, ``offset`` is its first sample in the
    stream, ``sentence_offset`` in its sentence."""

    seq: int
    sentence: int
    offset: int
    sentence_offset: int
    window: Window
    marks: tuple[Mark, ...] = ()  # the marks its chunk carries (timestamps.py: those starting in it)


@dataclass(frozen=True)
class Progress:
    """Cumulative counters of a stream's acoustic side. ``frames``: mel frames its sentences were
    planned to have; ``produced_frames``: those computed so far; ``jobs``: vocoder jobs emitted."""

    sentences: int = 0
    units: int = 0
    frames: int = 0
    produced_frames: int = 0
    jobs: int = 0
    frontend_s: float = 0.0
    acoustic_s: float = 0.0


@dataclass(frozen=True)
class AcousticStep:
    jobs: tuple[VocoderJob, ...]
    progress: Progress
    need_input: bool = False  # the source has no complete sentence yet
    input_done: bool = False  # every sentence has been taken and fully computed


@dataclass(frozen=True)
class VoiceWork:
    """What a stream's acoustic side needs of its voice and call, resolved before it starts."""

    am: AcousticModel
    voc: Vocoder
    hop: int
    inventories: Inventories
    emotion: str | None  # applied to symbol units (the front end writes it into text units itself)
    speaker: str | None
    override_units: bool  # symbol input: apply emotion/speaker to the units
    duration_scale: float
    options: StreamOptions
    sample_rate: int


class SentenceCursor:
    """One sentence's decoder/postnet state and the vocoder windows it cuts, with its place in the stream."""

    def __init__(self, work: VoiceWork, sentence: SentenceAcoustic, index: int, start_sample: int,
                 first_chunk: int | None, marks: list[Mark] | None = None):
        ctx = work.voc.info
        self.work, self.acoustic, self.index, self.start_sample = work, sentence, index, start_sample
        self.cutter = WindowCutter(sentence.total, work.options.vocoder_chunk, ctx.context_left, ctx.context_right,
                                   first_chunk)
        self.marks = deque(marks or ())  # not yet handed to a window, in order of start

    @property
    def finished(self) -> bool:
        return self.acoustic.finished

    def advance(self, token: CancelToken, first_seq: int) -> tuple[int, list[VocoderJob]]:
        """The next postnet chunk; returns its frame count and the windows it completes."""
        mel = self.acoustic.next_block(token)
        self.cutter.push(mel)
        hop, jobs = self.work.hop, list[VocoderJob]()
        while (win := self.cutter.pop()) is not None:
            offset = self.start_sample + win.start * hop
            end = offset + win.rows * hop
            marks = []
            while self.marks and (win.last or self.marks[0].start_sample < end):
                marks.append(self.marks.popleft())
            jobs.append(VocoderJob(first_seq + len(jobs), self.index, offset, win.start * hop, win, tuple(marks)))
        return int(mel.shape[0]), jobs


class AcousticCursor:
    """Plans sentences from ``source`` (front end first if needed) and advances them chunk by chunk."""

    def __init__(self, work: VoiceWork, source: UnitSource, token: CancelToken):
        self.work, self.source, self.token = work, source, token
        self._pending: deque[tuple[EncodedUnits, tuple[Token, ...]]] = deque()
        self._sentence: SentenceCursor | None = None
        self._progress = Progress()
        self._borrowed = 0.0  # decoder-step time of batched calls, this stream's share, not yet booked
        # The small first vocoder window buys latency when a listener is waiting: the stream's first
        # sentence, or one that had to wait for input. Later sentences are computed ahead of playback,
        # where it would only add context overhead (59 frames computed for 24, against 291 for 256).
        self._listener_waiting = True

    def step(self) -> AcousticStep:
        """Plan the next sentence if none is running, then compute the running sentence's next postnet
        chunk and cut the vocoder windows it completes."""
        p = self._progress
        while self._sentence is None:
            if not self._pending:
                t = time.perf_counter()
                units = self.source.next_sentence()
                p = replace(p, frontend_s=p.frontend_s + time.perf_counter() - t)
                if units is None:
                    self._progress = p
                    if self.source.done:
                        if p.sentences == 0:
                            raise InvalidInputError("nothing to synthesize: the input has no speakable text or "
                                                    "symbol units", param="input")
                        return AcousticStep((), p, input_done=True)
                    self._listener_waiting = True
                    return AcousticStep((), p, need_input=True)
                self._queue(units)
                continue
            p = self._start_sentence(*self._pending.popleft(), p)
            if self._sentence is not None:
                # Planned: the decoder steps are the next task, which the scheduler may batch with
                # other streams' (batching.py).
                self._progress = p
                return AcousticStep((), p)
        t = time.perf_counter()
        frames, jobs = self._sentence.advance(self.token, p.jobs)
        self._progress = replace(p, produced_frames=p.produced_frames + frames, jobs=p.jobs + len(jobs),
                                 acoustic_s=p.acoustic_s + self._borrowed + time.perf_counter() - t)
        self._borrowed = 0.0
        if self._sentence.finished:
            self._sentence = None
        return AcousticStep(tuple(jobs), self._progress)

    # -- batching.Member: the decoder steps of the running sentence, run by a DecodeGroup ----------
    def needs_step(self) -> bool:
        return self._sentence is not None and self._sentence.acoustic.needs_step

    def step_input(self) -> StepInput:
        if self._sentence is None:
            raise RuntimeError("no sentence is running")
        return self._sentence.acoustic.step_input(self.token)

    def take_step(self, out: StepOutput, seconds: float) -> None:
        if self._sentence is None:
            raise RuntimeError("no sentence is running")
        self._sentence.acoustic.take_step(out)
        self._borrowed += seconds

    def _start_sentence(self, encoded: EncodedUnits, tokens: tuple[Token, ...], p: Progress) -> Progress:
        work, opts = self.work, self.work.options
        t = time.perf_counter()
        plan = work.am.plan(encoded, duration_scale=work.duration_scale, token=self.token)
        index = p.sentences
        start_sample = p.frames * work.hop
        p = replace(p, sentences=index + 1, units=p.units + encoded.num_units, frames=p.frames + plan.valid_frames,
                    acoustic_s=p.acoustic_s + time.perf_counter() - t)
        if plan.valid_frames == 0:
            log.warning("sentence %d produced no frames (all durations round to 0)", index)
            return p
        # Where a listener waits, the first postnet chunk is just the first vocoder window: the first
        # audio then waits for 16 frames of decoder steps and postnet, not 48.
        waiting = self._listener_waiting
        first_postnet = min(opts.first_chunk, opts.postnet_chunk) if waiting else None
        sentence = work.am.sentence(plan, opts.postnet_chunk, opts.kv_block, first_postnet)
        marks = sentence_marks(tokens, plan.reps, work.hop, start_sample, work.sample_rate, index)
        self._sentence = SentenceCursor(work, sentence, index, start_sample, opts.first_chunk if waiting else None,
                                        marks)
        self._listener_waiting = False
        return p

    def _queue(self, units: list[Unit]) -> None:
        w = self.work
        tokens = self.source.tokens()
        if w.override_units:
            units = with_voice(units, w.emotion, w.speaker)
        limit = w.options.max_units
        pieces = split_units(units, limit) if limit and len(units) > limit else [units]
        for piece, piece_tokens in zip(pieces, split_tokens(tokens, [len(p) for p in pieces]), strict=True):
            if piece:
                try:
                    self._pending.append((encode_units(piece, w.inventories), piece_tokens))
                except InvalidInputError as e:
                    where = self.source.where()
                    if where is None:
                        raise
                    raise InvalidInputError(f"{where}: {e}") from None
