"""Exact timestamps: where each syllable, English word and break of a stream is in its audio.

The acoustic model predicts every unit's duration, and the length regulator repeats unit ``u``
``reps[u]`` times (``reps = trunc(d + 0.5)``, SPEC: length regulator); each mel frame is ``hop``
samples of audio. So unit ``u`` of a sentence occupies samples ``[start + cum[u] * hop, start +
cum[u + 1] * hop)`` of the stream (``cum`` the running sum of ``reps``, ``start`` the sentence's first
sample): no estimate, the same integers the decoder and vocoder ran on. A :class:`Mark` is that span
for one :class:`~sambert_deploy.symbols.Token` (the units a syllable, word or break speaks).

Delivery rule: an :class:`~.state.AudioChunk` carries the marks that START inside it (``start_sample``
in ``[offset, offset + len(samples))``); the last chunk of a sentence also carries any of the
sentence's marks not yet delivered (zero-length ones at its very end). So a streamed consumer gets the
first marks with the first audio, and every mark arrives no later than the audio it starts in. A
sentence whose durations all round to 0 has no audio and so no marks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..symbols import Token

if TYPE_CHECKING:
    from .state import AudioChunk

KINDS = ("syllable", "word", "break", "phone")


@dataclass(frozen=True)
class Mark:
    """One token's place in the stream's audio: samples ``[start_sample, end_sample)`` (exact, from the
    predicted durations), ``start_s``/``end_s`` in seconds. ``text``: what is spoken, after
    normalization (二零二四 for 2024; the punctuation of a break, or ''); ``kind``: syllable, word,
    break or phone (symbol input). ``source_start``/``source_end``: the span of the caller's input it
    came from (character offsets into the concatenation of every text piece fed), None where there is
    none (symbol input, a break no punctuation set). ``sentence`` is the chunk's sentence index,
    ``first_unit``/``num_units`` its units in that sentence; ``level``: a break's level (1..4)."""

    text: str
    kind: str
    start_sample: int
    end_sample: int
    sample_rate: int
    sentence: int
    first_unit: int
    num_units: int
    source_start: int | None = None
    source_end: int | None = None
    level: int = 0

    @property
    def start_s(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def end_s(self) -> float:
        return self.end_sample / self.sample_rate

    @property
    def source(self) -> tuple[int, int] | None:
        if self.source_start is None or self.source_end is None:
            return None
        return (self.source_start, self.source_end)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "kind": self.kind, "start_s": round(self.start_s, 6), "end_s": round(self.end_s, 6),
                "start_sample": self.start_sample, "end_sample": self.end_sample, "sentence": self.sentence,
                "source": list(self.source) if self.source is not None else None, "level": self.level}


def sentence_marks(tokens: Sequence[Token], reps: np.ndarray, hop: int, start_sample: int, sample_rate: int,
                   sentence: int) -> list[Mark]:
    """Marks of one planned sentence: ``reps`` int [U] the frames per unit the length regulator used."""
    bounds = start_sample + hop * np.concatenate([[0], np.cumsum(reps, dtype=np.int64)])
    out = []
    for t in tokens:
        a, b = t.first, min(t.first + t.count, len(reps))
        if a >= b:
            continue
        src = t.source or (None, None)
        out.append(Mark(t.text, t.kind, int(bounds[a]), int(bounds[b]), sample_rate, sentence, a, b - a,
                        src[0], src[1], t.level))
    return out


@dataclass(frozen=True)
class TimedSpeech:
    """A whole stream: ``samples`` float32 mono, every :class:`Mark` in order."""

    samples: np.ndarray
    sample_rate: int
    marks: tuple[Mark, ...]

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def collect(chunks: Iterable[AudioChunk], sample_rate: int | None = None) -> TimedSpeech:
    """Consume a stream (or any chunks): the concatenated audio and every mark the chunks carried."""
    audio: list[np.ndarray] = []
    marks: list[Mark] = []
    rate = sample_rate
    for c in chunks:
        audio.append(c.samples)
        marks.extend(c.marks)
        rate = c.sample_rate
    if rate is None:
        raise ValueError("no chunks and no sample_rate: give the sample rate of an empty stream")
    samples = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    return TimedSpeech(samples, rate, tuple(marks))
