"""Streaming audio encoders for HTTP responses: float32 chunks in, bytes out as soon as they exist.

Every format is streamed: each ``send(chunk)`` returns the bytes that chunk completed, so the first
audio leaves with the synthesizer's first chunk, whatever the format.

* ``wav``: a RIFF header whose sizes say "unknown" (0xFFFFFFFF, as streaming servers and ffmpeg write
  it), then PCM16; browsers, ffmpeg and libsndfile play it and read to the end of the stream.
* ``pcm``: raw s16le mono at the model's rate (16 kHz), or resampled to 24 kHz for clients that
  assume OpenAI's rate.
* ``mp3``, ``aac``, ``opus``, ``flac``: FFmpeg's encoders (libmp3lame, its native AAC, libopus, FLAC)
  and muxers through PyAV, writing into an output that cannot seek, with a flush after every packet.
  A muxer that cannot seek writes nothing it would patch later, so the bytes as first written are the
  whole file. The containers are the ones that need no index or length up front: raw MP3 frames (no
  Xing/LAME header: that one is filled in at the end), ADTS for AAC (a header on every frame), Ogg for
  Opus (pages are final once written; short pages so they leave early), and native FLAC whose
  STREAMINFO says "total samples unknown" and "MD5 unset", both allowed by the FLAC format.

What a stream cannot carry: MP3 and ADTS have no place for the encoder's priming and the last frame's
padding, so decoders play up to ~0.1 s of extra silence (Ogg Opus and FLAC are sample-exact), and
libsndfile (python-soundfile) refuses a FLAC of unknown length (libsndfile#1038; FFmpeg, libFLAC and
browsers read it). FLAC is bit-exact to the WAV's PCM16.

Sample rates: where the client or a codec needs a rate other than the model's (pcm at 24 kHz; Opus for
a model rate it lacks), soxr's streaming resampler converts, its state carried across chunks so the
output does not depend on where the chunks were cut.
"""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np


@dataclass(frozen=True)
class Codec:
    """How one compressed format is produced: FFmpeg's encoder, the container's muxer, the muxer's
    options (as FFmpeg names them) and the bit rate (None: lossless)."""

    codec: str
    container: str
    sample_format: str
    bit_rate: int | None
    container_options: tuple[tuple[str, str], ...] = ()


CODECS = {
    # For 16 kHz mono speech; tests/test_formats.py's two tones come back at 26 dB SNR (MP3), 42 (AAC)
    # and 39 (Opus) at these rates.
    "mp3": Codec("libmp3lame", "mp3", "fltp", 64_000),
    "aac": Codec("aac", "adts", "fltp", 64_000),
    # An Ogg page is written when it holds page_duration of audio (1 s by default): 60 ms pages leave
    # with the chunk that fills them, for 3% more bytes (20 ms, a page per packet, costs 17%).
    "opus": Codec("libopus", "ogg", "flt", 32_000, (("page_duration", "60000"),)),
    # FFmpeg's FLAC muxer reserves 8 KiB of padding for tags edited in place; a stream has no use for it.
    "flac": Codec("flac", "flac", "s16", None, (("metadata_header_padding", "0"),)),
}

# Without PyAV (an install without the serve extra) only the formats that need no codec are offered.
FORMATS = ("wav", "pcm") + (tuple(CODECS) if importlib.util.find_spec("av") is not None else ())
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "aac": "audio/aac",
                 "opus": "audio/ogg; codecs=opus"}


def pcm16(samples: np.ndarray) -> np.ndarray:
    """float32 in (-1, 1) -> int16 the way the runtime's WAV writer converts (x * 32768, clipped)."""
    return np.clip(samples * 32768.0, -32768, 32767).astype("<i2")


def wav_header(sample_rate: int) -> bytes:
    """A 44-byte PCM16 mono WAV header for a stream of unknown length."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) +
            b"data" + struct.pack("<I", unknown))


@dataclass(frozen=True)
class Encoding:
    format: str
    sample_rate: int  # of the bytes produced (the rate the codec is fed, for a codec)
    content_type: str


def codec_rate(fmt: str, model_rate: int) -> int:
    """The rate ``fmt``'s encoder is fed: the model's when the encoder takes it, else the next higher
    rate it takes (the highest when none is higher)."""
    import av

    rates = av.codec.Codec(CODECS[fmt].codec, "w").audio_rates
    if not rates or model_rate in rates:
        return model_rate
    higher = [r for r in rates if r > model_rate]
    return min(higher) if higher else max(rates)


def encoding(fmt: str, model_rate: int, pcm_rate: int | None = None) -> Encoding:
    """What ``fmt`` sends for a model at ``model_rate``: its rate (``pcm_rate`` for pcm; the codec's for a
    codec) and content type. ``fmt`` is one of :data:`FORMATS`."""
    if fmt == "pcm":
        rate = pcm_rate or model_rate
        return Encoding("pcm", rate, f"audio/L16; rate={rate}; channels=1")
    if fmt == "wav":
        return Encoding("wav", model_rate, CONTENT_TYPES["wav"])
    return Encoding(fmt, codec_rate(fmt, model_rate), CONTENT_TYPES[fmt])


class _Resampler:
    """soxr's streaming resampler: float32 chunks in, the output they complete out; ``flush()`` at the end."""

    def __init__(self, in_rate: int, out_rate: int):
        import soxr

        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(np.ascontiguousarray(x, np.float32))

    def flush(self) -> np.ndarray:
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


class _Sink:
    """The muxer's output: collects what it writes until taken. It has no ``seek``, so PyAV opens it as a
    non-seekable stream and FFmpeg's muxers write nothing that they would come back to patch."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def encoder(enc: Encoding, model_rate: int) -> Generator[bytes, np.ndarray | None, None]:
    """A generator: ``send(samples)`` (float32, mono, at ``model_rate``) returns the bytes ready so far;
    ``send(None)`` ends the stream and returns the rest. Prime it with ``next()``, which returns the
    header (possibly empty). Closing it early (a client gone) frees the encoder."""
    resample = _Resampler(model_rate, enc.sample_rate) if enc.sample_rate != model_rate else None
    if enc.format in ("wav", "pcm"):
        x = yield (wav_header(enc.sample_rate) if enc.format == "wav" else b"")
        while x is not None:
            x = yield pcm16(resample(x) if resample is not None else x).tobytes()
        yield pcm16(resample.flush()).tobytes() if resample is not None else b""
        return
    yield from _compressed(enc, resample)


def _compressed(enc: Encoding, resample: _Resampler | None) -> Generator[bytes, np.ndarray | None, None]:
    import av
    from av.audio.stream import AudioStream

    spec = CODECS[enc.format]
    sink = _Sink()
    container = av.open(sink, mode="w", format=spec.container,
                        container_options={"flush_packets": "1", **dict(spec.container_options)})
    try:
        stream = cast(AudioStream, container.add_stream(spec.codec, rate=enc.sample_rate, layout="mono"))
        stream.codec_context.format = spec.sample_format
        if spec.bit_rate is not None:
            stream.codec_context.bit_rate = spec.bit_rate
        pts = 0

        def encode(x: np.ndarray | None) -> None:
            nonlocal pts
            if x is not None:
                if x.size == 0:
                    return
                # FLAC gets the WAV's own int16 (bit-exact to it); the lossy encoders take float.
                if spec.sample_format == "s16":
                    frame = av.AudioFrame.from_ndarray(pcm16(x).reshape(1, -1), format="s16", layout="mono")
                else:
                    frame = av.AudioFrame.from_ndarray(np.asarray(x, np.float32).reshape(1, -1), format="flt",
                                                       layout="mono")
                frame.sample_rate = enc.sample_rate
                frame.pts = pts
                pts += x.size
            else:
                frame = None
            container.mux(stream.encode(frame))

        # The header (Ogg Opus head and tags, FLAC STREAMINFO, ID3) goes out at once, with no audio yet.
        container.start_encoding()
        x = yield sink.take()
        while x is not None:
            encode(resample(x) if resample is not None else x)
            x = yield sink.take()
        if resample is not None:
            encode(resample.flush())
        encode(None)
        container.close()
        yield sink.take()
    finally:
        container.close()  # idempotent; on an early close the trailer goes to the sink and is dropped
