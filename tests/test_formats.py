"""Streamed compressed audio (serve/encode.py): each format fed chunk by chunk, then decoded in full by
decoders that are not the encoder (FFmpeg's CLI, reading a pipe as a streaming client does; PyAV's
decoder; Chromium's decodeAudioData), through the encoder alone and through a live server with the real
`openai` client."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from .conftest import missing, need_module, uvicorn_on_loopback

need_module("av", "the serve extra (pip install -e '.[serve]')")
need_module("soxr", "the serve extra (pip install -e '.[serve]')")

from sambert_deploy.serve.encode import FORMATS, encoder, encoding, pcm16  # noqa: E402

RATE = 16000
LOSSY = ("mp3", "aac", "opus")
COMPRESSED = ("mp3", "aac", "opus", "flac")
# Samples a decoder may add to what was sent, at 16 kHz: MP3 and ADTS carry no gapless info in a stream
# (the LAME/Xing header that would is written at the end), so decoders play the encoder's priming and
# the last frame's padding. LAME: its 576-sample delay (+48 of its MDCT), the last frame's padding and
# the frame it flushes past it, three 576-sample frames at most (MPEG-2 at 16 kHz); AAC: 1024 of
# priming plus the last 1024-sample frame. Ogg Opus (pre-skip, end granule) and FLAC are exact;
# FFmpeg's 48 -> 16 kHz resampling of Opus may round by a sample.
SLACK = {"mp3": 3 * 576, "aac": 1024 + 1024, "opus": 2, "flac": 0}
# How far the decodable prefix may trail the samples sent: the encoder's lookahead and the frame in
# flight (LAME's look-ahead, AAC's one-frame delay, FLAC's 4608-sample blocks at most) and, for Opus, an
# unfinished 60 ms Ogg page, a 20 ms frame in flight, a partial one and the decoder's pre-skip.
LAG = {"mp3": 2 * 1152 + 1105, "aac": 3 * 1024, "opus": 960 + 2 * 320 + 104 + 320, "flac": 4608}


def tones(seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    """440 Hz then 1000 Hz, ``seconds`` each, float32 at 0.5: the order and both pitches must survive."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.concatenate([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1000 * t)])).astype(np.float32)


def stream(fmt: str, x: np.ndarray, cuts: Sequence[int], model_rate: int = RATE,
           pcm_rate: int | None = None) -> list[bytes]:
    """The encoder's outputs: header, one per chunk (``x`` split at ``cuts``), the tail."""
    g = encoder(encoding(fmt, model_rate, pcm_rate), model_rate)
    out = [next(g)]
    out += [g.send(chunk) for chunk in np.split(x, list(cuts))]
    out.append(g.send(None))
    g.close()
    return out


def decode_av(data: bytes, rate: int = RATE) -> np.ndarray:
    """PyAV's decoder (libavcodec), resampled to ``rate`` by soxr when the codec decodes at another."""
    import av
    import soxr

    with av.open(io.BytesIO(data), mode="r") as c:
        frames = [f for f in c.decode(c.streams.audio[0])]
    if not frames:
        return np.zeros(0, np.float32)
    y = np.concatenate([f.to_ndarray().astype(np.float32).reshape(f.samples, -1)[:, 0] if f.format.is_packed
                        else f.to_ndarray()[0].astype(np.float32) for f in frames])
    if np.issubdtype(frames[0].to_ndarray().dtype, np.integer):
        y = y / 32768.0
    return y if frames[0].sample_rate == rate else soxr.resample(y, frames[0].sample_rate, rate)


def decode_ffmpeg(data: bytes, fmt: str, rate: int = RATE) -> np.ndarray:
    """FFmpeg's CLI reading a pipe (no seeking back to a header), float32 mono at ``rate``."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        missing("no ffmpeg CLI here (apt-get install ffmpeg; .ci/run installs it)")
    demuxer = {"mp3": "mp3", "aac": "aac", "opus": "ogg", "flac": "flac"}[fmt]
    r = subprocess.run([exe, "-v", "error", "-f", demuxer, "-i", "pipe:0", "-f", "f32le", "-ac", "1", "-ar", str(rate),
                        "pipe:1"], input=data, capture_output=True, timeout=60, check=False)
    assert r.returncode == 0 and not r.stderr, r.stderr.decode(errors="replace")
    return np.frombuffer(r.stdout, "<f4")


DECODERS = {"pyav": lambda data, fmt: decode_av(data), "ffmpeg": decode_ffmpeg}


def dominant_hz(y: np.ndarray, rate: int = RATE) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / rate)[int(np.argmax(spec))])


def aligned(y: np.ndarray, x: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The lag (0..max_lag) at which ``y`` best matches ``x``, and the normalized correlation there."""
    best = (0, -1.0)
    for lag in range(max_lag + 1):
        seg = y[lag:lag + len(x)]
        if len(seg) < len(x):
            break
        c = float(np.dot(seg, x) / (np.linalg.norm(seg) * np.linalg.norm(x) + 1e-12))
        best = max(best, (lag, c), key=lambda b: b[1])
    return best


# -- the encoder alone -----------------------------------------------------------------------------

def test_formats_offered() -> None:
    assert set(FORMATS) == {"wav", "pcm", "mp3", "aac", "opus", "flac"}


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("fmt", COMPRESSED)
def test_streamed_format_decodes_in_full(fmt: str, decoder: str) -> None:
    """Every chunk's bytes as first written, concatenated, decode to the whole signal: the length within
    the codec's priming and padding, both tones in order, the waveform itself where the codec keeps it."""
    x = tones()
    data = b"".join(stream(fmt, x, [4000, 4001, 7333, 20000, 31999]))
    y = DECODERS[decoder](data, fmt)
    assert 0 <= len(y) - len(x) <= SLACK[fmt], (fmt, len(y), len(x))
    if fmt == "flac":
        assert np.array_equal(np.round(y * 32768).astype(np.int32), pcm16(x).astype(np.int32))
        return
    lag, corr = aligned(y, x, SLACK[fmt])
    assert corr > 0.99, (fmt, lag, corr)  # 26 dB SNR or better at the bit rates encode.CODECS sets
    y = y[lag:lag + len(x)]
    half = len(x) // 2
    assert abs(dominant_hz(y[:half]) - 440) < 5 and abs(dominant_hz(y[half:]) - 1000) < 5


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_bytes_come_with_each_chunk(fmt: str) -> None:
    """After every chunk the bytes sent so far decode (as a stream cut there) to all the audio sent but
    the codec's lookahead: the first audio leaves with the first chunk, not at the end."""
    x = tones()
    cuts = list(range(4000, len(x), 4000))
    parts = stream(fmt, x, cuts)
    assert parts[1], f"{fmt}: no bytes after the first chunk of 4000 samples"
    for k, sent in enumerate([*cuts, len(x)], start=1):
        prefix = b"".join(parts[:k + 1])
        got = len(decode_ffmpeg(prefix, fmt))
        assert got >= sent - LAG[fmt], (fmt, k, sent, got)


@pytest.mark.parametrize(("fmt", "pcm_rate"), [("wav", None), ("pcm", None), ("pcm", 24000), ("mp3", None),
                                               ("aac", None), ("opus", None), ("flac", None)])
def test_output_does_not_depend_on_chunking(fmt: str, pcm_rate: int | None) -> None:
    rng = np.random.default_rng(7)
    x = (0.3 * rng.standard_normal(RATE * 2)).astype(np.float32)
    whole = stream(fmt, x, [], pcm_rate=pcm_rate)
    ragged = stream(fmt, x, [1, 2, 3, 160, 161, 5000, 5001, 17777, 31000], pcm_rate=pcm_rate)
    if fmt in ("wav", "pcm"):
        assert b"".join(whole) == b"".join(ragged)
    else:
        assert np.array_equal(decode_av(b"".join(whole)), decode_av(b"".join(ragged)))


def test_pcm_24k_is_a_clean_resampling() -> None:
    """16 -> 24 kHz: the length is 3/2 of the input, a 7 kHz tone keeps its level, and its image at
    9 kHz (above the input's band, where only the resampler's filter can put energy) stays 80 dB down."""
    t = np.arange(RATE * 2) / RATE
    x = (0.5 * np.sin(2 * np.pi * 7000 * t)).astype(np.float32)
    data = b"".join(stream("pcm", x, [999, 12345], pcm_rate=24000))
    y = np.frombuffer(data, "<i2").astype(np.float64) / 32768
    assert abs(len(y) - len(x) * 3 // 2) <= 1
    mid = y[4800:-4800]
    spec = np.abs(np.fft.rfft(mid * np.blackman(len(mid))))
    freqs = np.fft.rfftfreq(len(mid), 1 / 24000)
    tone = spec[np.abs(freqs - 7000) < 50].max()
    image = spec[np.abs(freqs - 9000) < 50].max()
    assert abs(np.sqrt(np.mean(mid ** 2)) - 0.5 / np.sqrt(2)) < 0.005  # the tone's level, to 0.1 dB
    assert 20 * np.log10(image / tone) < -80, 20 * np.log10(image / tone)


@pytest.mark.parametrize("fmt", LOSSY)
def test_codec_rate_other_than_the_models(fmt: str) -> None:
    """A model rate the codec cannot take (22050 Hz for Opus) is resampled to one it can; the others are
    kept; the tones and the duration survive either way."""
    enc = encoding(fmt, 22050)
    assert enc.sample_rate == (24000 if fmt == "opus" else 22050)
    x = tones(rate=22050)
    data = b"".join(stream(fmt, x, [3000, 9000], model_rate=22050))
    y = decode_ffmpeg(data, fmt, rate=22050)
    slack = {"mp3": 1105 + 576 * 2, "aac": 2048 * 2, "opus": 8}[fmt]
    assert 0 <= len(y) - len(x) <= slack, (fmt, len(y), len(x))
    lag, corr = aligned(y, x, slack)
    assert corr > 0.99, (fmt, lag, corr)


@pytest.mark.parametrize("fmt", COMPRESSED)
@pytest.mark.parametrize("num_samples", [1, 319, 1153])
def test_short_streams(fmt: str, num_samples: int) -> None:
    """Less than a codec frame, or a frame and a sample: still a stream decoders read to the end (Opus
    at its own 48 kHz, where one sample at 16 kHz is three)."""
    x = tones()[:num_samples]
    data = b"".join(stream(fmt, x, []))
    scale = 3 if fmt == "opus" else 1
    y = decode_ffmpeg(data, fmt, rate=RATE * scale)
    assert 0 <= len(y) - num_samples * scale <= SLACK[fmt] * scale, (fmt, len(y))


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_empty_stream(fmt: str) -> None:
    """No audio at all: the header alone (the priming ``next()`` returns it), which for FLAC is a file
    of zero samples; MP3, ADTS and Ogg Opus have no frame to decode, and nothing else is invented."""
    parts = stream(fmt, np.zeros(0, np.float32), [])
    assert parts[0] == b"".join(parts) and len(parts[0]) < 200, (fmt, [len(p) for p in parts])
    if fmt == "flac":
        assert len(decode_ffmpeg(parts[0], fmt)) == 0


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_closed_midway(fmt: str) -> None:
    """A client that leaves: the generator closed after one chunk frees the encoder without an error."""
    g = encoder(encoding(fmt, RATE), RATE)
    next(g)
    g.send(tones()[:5000])
    g.close()


# -- through the server ----------------------------------------------------------------------------

TEXT = "今天天气很好。我们去公园散步吧！"


@pytest.fixture(scope="module")
def synth(served_synth: object) -> object:
    return served_synth


@pytest.fixture(scope="module")
def live(synth: object) -> Iterator[str]:
    need_module("fastapi", "the serve extra (pip install -e '.[serve]')")
    from sambert_deploy.serve.app import ServeConfig, create_app

    with uvicorn_on_loopback(create_app(synth, ServeConfig(max_concurrent=2, max_queue=4))) as url:
        yield url


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_openai_client_streams_each_format(live: str, synth: object, fmt: str) -> None:
    """The `openai` client's streaming response, read piece by piece, decodes (FFmpeg and PyAV) to the
    Python API's audio: its length within the codec's slack, FLAC bit-exact to the PCM16."""
    openai = need_module("openai", "the dev extra (pip install -e '.[dev]')")
    c = openai.OpenAI(base_url=live + "/v1", api_key="unused")
    ref = synth.synthesize(TEXT)  # type: ignore[attr-defined]
    with c.audio.speech.with_streaming_response.create(model="tts-1", voice="tiny_emo", input=TEXT,
                                                       response_format=fmt) as resp:
        content_type = resp.headers["content-type"]
        data = b"".join(resp.iter_bytes())
    assert content_type.startswith({"mp3": "audio/mpeg", "aac": "audio/aac", "opus": "audio/ogg",
                                    "flac": "audio/flac"}[fmt]), content_type
    for decode in DECODERS.values():
        y = decode(data, fmt)
        assert 0 <= len(y) - len(ref) <= SLACK[fmt], (fmt, len(y), len(ref))
        if fmt == "flac":
            assert np.array_equal(np.round(y * 32768).astype(np.int16), pcm16(ref))


def test_browser_decodes_each_format(live: str, synth: object) -> None:
    """Chromium's own decoders (decodeAudioData) read every streamed format to its full duration."""
    sync_api = need_module("playwright.sync_api", "the dev extra (pip install -e '.[dev]')")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        missing("no chromium here (apt-get install chromium; .ci/run installs it)")
    ref_s = len(synth.synthesize(TEXT)) / RATE  # type: ignore[attr-defined]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(live + "/health")
            decoded = page.evaluate("""async ([formats, text]) => {
                const out = {};
                for (const fmt of formats) {
                    const r = await fetch('/v1/audio/speech', {method: 'POST',
                        headers: {'Content-Type': 'application/json'},
                        body: JSON.stringify({model: 'tts-1', input: text, voice: 'tiny_emo', response_format: fmt})});
                    const buf = await r.arrayBuffer();
                    try {
                        const audio = await new OfflineAudioContext(1, 16000, 16000).decodeAudioData(buf);
                        out[fmt] = {duration: audio.duration, rate: audio.sampleRate};
                    } catch (e) {
                        out[fmt] = {error: String(e)};
                    }
                }
                return out;
            }""", [list(COMPRESSED), TEXT])
        finally:
            browser.close()
    for fmt in COMPRESSED:
        got = decoded[fmt]
        assert "error" not in got, (fmt, got)
        assert 0 <= got["duration"] - ref_s <= SLACK[fmt] / RATE + 1e-3, (fmt, got, ref_s)


def test_a_format_not_offered_is_a_400(live: str) -> None:
    """aac is offered now; a format that is not (ogg) is a 400 naming the field."""
    import httpx

    r = httpx.post(live + "/v1/audio/speech", json={"model": "tts-1", "input": TEXT, "voice": "tiny_emo",
                                                    "response_format": "ogg"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
