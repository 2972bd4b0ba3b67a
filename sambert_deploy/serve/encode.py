"""Streaming audio encoders for HTTP responses: float32 chunks in, bytes out as soon as they exist.

* ``wav``: a RIFF header whose sizes say "unknown" (0xFFFFFFFF, as streaming servers and ffmpeg write
  it), then PCM16; browsers, ffmpeg and libsndfile play it and read to the end of the stream.
* ``pcm``: raw s16le mono at the model's rate (16 kHz), or resampled to 24 kHz for clients that
  assume OpenAI's rate.
* ``opus`` (Ogg): libsndfile (the ``soundfile`` wheel bundles it with Opus) writing a temporary file
  whose new bytes are handed on as they are written: Ogg pages are final once written.
* ``flac``, ``mp3``: encoded whole at the end (libsndfile's FLAC and LAME writers patch earlier bytes
  when they close, and a stream of the bytes as first written did not decode: FLAC readers refused
  it, and mpg123 stopped after 0.4 s of a 2 s MP3). They are offered, not streamed; the docs say so.
* ``aac``: not offered: no wheel here ships an AAC encoder (a request for it is a 400 naming the
  formats that are).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

FORMATS = ("wav", "pcm", "flac", "mp3", "opus")
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg; codecs=opus"}


def pcm16(samples: np.ndarray) -> np.ndarray:
    """float32 in (-1, 1) -> int16 the way the runtime's WAV writer converts (x * 32768, clipped)."""
    return np.clip(samples * 32768.0, -32768, 32767).astype("<i2")


def wav_header(sample_rate: int) -> bytes:
    """A 44-byte PCM16 mono WAV header for a stream of unknown length."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) +
            b"data" + struct.pack("<I", unknown))


class Resampler:
    """Streaming 16 kHz -> 24 kHz (up 3, down 2) with a windowed-sinc low-pass, state carried between
    chunks so the output does not depend on where the chunks were cut."""

    def __init__(self, up: int = 3, down: int = 2, taps_per_phase: int = 16):
        self.up, self.down = up, down
        n = taps_per_phase * up
        t = np.arange(n) - (n - 1) / 2
        cutoff = 0.5 / max(up, down)  # of the upsampled rate
        h = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(n, 8.0)
        self.h = (h * up / h.sum()).astype(np.float64)
        self.hist = np.zeros(n - 1)
        self.phase = 0  # index in the upsampled stream of the next output sample, mod down

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.size == 0:
            return np.zeros(0, np.float32)
        up = np.zeros(x.size * self.up)
        up[:: self.up] = x
        ext = np.concatenate([self.hist, up])
        y = np.convolve(ext, self.h, mode="valid")  # one value per new upsampled sample
        self.hist = ext[-(len(self.h) - 1):]
        out = y[self.phase:: self.down]
        self.phase = (self.phase - len(y)) % self.down
        return out.astype(np.float32)


class _Tail:
    """libsndfile writes a real (unlinked) temporary file; the bytes appended since the last look are
    handed on. A rewrite of bytes already sent (a header patched at close) is not sent again: the
    stream keeps the header's "unknown length", which decoders accept."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self.fd = self._file.fileno()
        self.sent = 0

    def take(self) -> bytes:
        size = os.fstat(self.fd).st_size
        out = os.pread(self.fd, size - self.sent, self.sent) if size > self.sent else b""
        self.sent += len(out)
        return out

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Encoding:
    format: str
    sample_rate: int  # of the bytes produced
    content_type: str


def encoding(fmt: str, model_rate: int, pcm_rate: int | None = None) -> Encoding:
    if fmt == "pcm":
        rate = pcm_rate or model_rate
        return Encoding("pcm", rate, f"audio/L16; rate={rate}; channels=1")
    return Encoding(fmt, model_rate, CONTENT_TYPES[fmt])


def encoder(enc: Encoding, model_rate: int) -> Generator[bytes, np.ndarray | None, None]:
    """A generator: ``send(samples)`` returns the bytes ready so far; ``send(None)`` ends the stream and
    returns the rest. Prime it with ``next()``, which returns the header (possibly empty)."""
    if enc.format in ("wav", "pcm"):
        resample = Resampler() if enc.format == "pcm" and enc.sample_rate != model_rate else None
        x = yield (wav_header(enc.sample_rate) if enc.format == "wav" else b"")
        while x is not None:
            if resample is not None:
                x = resample(x)
            x = yield pcm16(x).tobytes()
        yield b""
        return
    import soundfile as sf

    if enc.format in ("flac", "mp3"):
        parts: list[np.ndarray] = []
        x = yield b""
        while x is not None:
            parts.append(np.asarray(x, np.float32))
            x = yield b""
        buf = io.BytesIO()
        fmt, subtype = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}[enc.format]
        sf.write(buf, np.concatenate(parts) if parts else np.zeros(0, np.float32), enc.sample_rate, format=fmt,
                 subtype=subtype)
        yield buf.getvalue()
        return
    tail = _Tail()
    fmt, subtype = ("OGG", "OPUS")
    f = sf.SoundFile(tail.fd, "w", samplerate=enc.sample_rate, channels=1, format=fmt, subtype=subtype,
                     closefd=False)
    try:
        x = yield tail.take()
        while x is not None:
            f.write(x.astype(np.float32))
            x = yield tail.take()
        f.close()
        yield tail.take()
    finally:
        if not f.closed:
            f.close()
        tail.close()
