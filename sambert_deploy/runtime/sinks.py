"""Sinks over a stream of :class:`~.synthesizer.AudioChunk`: a WAV file written as chunks arrive, raw
PCM16 to a binary stream (stdout), or a callback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from ..errors import InvalidInputError
from .synthesizer import AudioChunk


def write_wav(chunks: Iterable[AudioChunk], path: str | Path, sample_rate: int) -> int:
    """Stream chunks into a PCM16 WAV file (the header is finalized on close). Returns samples written."""
    import soundfile as sf

    p = Path(path)
    if p.parent and not p.parent.exists():
        raise InvalidInputError(f"output folder {p.parent} does not exist")
    n = 0
    try:
        f = sf.SoundFile(str(p), "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format="WAV")
    except (RuntimeError, OSError) as e:
        raise InvalidInputError(f"cannot write {p}: {e}") from None
    with f:
        for c in chunks:
            f.write(c.int16())
            n += len(c.samples)
    return n


def write_pcm(chunks: Iterable[AudioChunk], stream: BinaryIO) -> int:
    """Raw little-endian PCM16 mono, flushed per chunk so a player downstream starts at once."""
    n = 0
    for c in chunks:
        stream.write(c.int16().astype("<i2").tobytes())
        stream.flush()
        n += len(c.samples)
    return n


def each_chunk(chunks: Iterable[AudioChunk], callback: Callable[[AudioChunk], None]) -> int:
    n = 0
    for c in chunks:
        callback(c)
        n += len(c.samples)
    return n


def _progress(chunks: Iterable[AudioChunk]) -> Iterable[AudioChunk]:
    total = 0.0
    for c in chunks:
        total += c.duration
        sys.stderr.write(f"\r  sentence {c.sentence + 1}, {total:7.1f} s audio")
        sys.stderr.flush()
        yield c
    sys.stderr.write("\n")


def write_stream(chunks: Iterable[AudioChunk], out: str, sample_rate: int, progress: bool = False) -> int:
    """``out`` '-' -> raw PCM16 on stdout, else a WAV path."""
    if progress:
        chunks = _progress(chunks)
    if out == "-":
        return write_pcm(chunks, sys.stdout.buffer)
    return write_wav(chunks, out, sample_rate)
