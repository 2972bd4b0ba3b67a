"""Sinks over a stream of :class:`~.stream.AudioChunk`: a WAV file written as chunks arrive, raw
PCM16 to a binary stream (stdout), or a callback."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from ..errors import InvalidInputError
from .stream import AudioChunk


def check_output(path: str | Path) -> Path:
    """``path`` as a WAV output: its folder exists and it is not a folder itself (a cheap check callers
    make before loading anything, and :func:`write_wav` again before writing)."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidInputError(f"output folder {folder} does not exist; create it or choose another -o path")
    if p.is_dir():
        raise InvalidInputError(f"output {p} is a directory; give a .wav file path")
    return p


def write_wav(chunks: Iterable[AudioChunk], path: str | Path, sample_rate: int) -> int:
    """Stream chunks into a PCM16 WAV file. Returns samples written.

    Written to a temporary file beside ``path`` and moved into place when complete, so a failed or
    interrupted synthesis never leaves a truncated file or destroys the one that was there.
    """
    import soundfile as sf

    p = check_output(path)
    folder = p.parent
    n = 0
    try:
        # Not mkstemp: its 0600 mode would end up on the user's file; a random name is as safe here.
        tmp = str(folder / f".{p.name}.{secrets.token_hex(6)}.part")
        f = sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format="WAV")
    except (RuntimeError, OSError) as e:
        raise InvalidInputError(f"cannot write {p}: {e}") from None
    try:
        with f:
            for c in chunks:
                f.write(c.int16())
                n += len(c.samples)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
