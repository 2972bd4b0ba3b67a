"""Real speech for the quality gate, and HiFiGAN's own mel function (numpy).

Recordings come from Debian packages (nothing downloads), five speakers:

* gcin-voice: Mandarin syllables, concatenated into a real sentence;
* codec2-examples: speech_orig_16k (English, 16 kHz), hts1a (male English, 8 kHz) and ve9qrp (a radio
  amateur received over HF single sideband: band-limited to ~3 kHz with the band's hiss under and
  between the words, the noisy one);
* pocketsphinx-testdata: a LibriVox audiobook reader (English, 16 kHz, decoded from a 64 kbps MP3).

Everything is resampled to the vocoder's 22050 Hz and kept at most :data:`MAX_SECONDS` long so the
CI gate is fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np

from ..errors import ModelDirectoryError

SAMPLE_RATE = 22050
N_FFT, HOP, WIN, N_MELS, FMIN, FMAX = 1024, 256, 1024, 80, 0.0, 8000.0
MAX_SECONDS = 4.0

CODEC2 = Path("/usr/share/codec2/raw")
GCIN = Path("/usr/share/gcin-voice/ogg")
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
DEBIAN_PACKAGES = ("codec2-examples", "gcin-voice", "pocketsphinx-testdata")  # what speech_set needs

# 今天天气很好，我们去公园散步 in zhuyin (tone 1 folders carry no digit, the neutral 们 uses tone 1's).
MANDARIN_SENTENCE = "今天天气很好，我们去公园散步"
MANDARIN_SYLLABLES = ("ㄐㄧㄣ", "ㄊㄧㄢ", "ㄊㄧㄢ", "ㄑㄧ4", "ㄏㄣ3", "ㄏㄠ3", ",", "ㄨㄛ3", "ㄇㄣ", "ㄑㄩ4", "ㄍㄨㄥ",
                      "ㄩㄢ2", "ㄙㄢ4", "ㄅㄨ4")


@dataclass(frozen=True)
class Recording:
    """Speech at 22050 Hz, trimmed to a whole number of hops, and its HiFiGAN log-mel [80, F]."""

    name: str
    language: str
    audio: np.ndarray
    mel: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def feed(self) -> dict[str, np.ndarray]:
        return {"mel": self.mel[None].astype(np.float32)}


# ----------------------------------------------------------------------------------------------
# mel (HiFiGAN meldataset.mel_spectrogram, re-implemented: the package's own needs torchaudio/librosa)
# ----------------------------------------------------------------------------------------------


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False).
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    logstep = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), m * (200.0 / 3))


@lru_cache(maxsize=4)
def mel_basis(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN,
              fmax: float = FMAX) -> np.ndarray:
    """Slaney-normalised triangular mel filters [n_mels, 1 + n_fft/2], as librosa.filters.mel builds them."""
    fft_f = np.linspace(0.0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_f[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def log_mel(audio: np.ndarray, sr: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP, win: int = WIN,
            n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """HiFiGAN's training mel: reflect pad (n_fft-hop)/2, Hann STFT center=False (a window shorter than
    n_fft centred in it, as torch.stft pads it), magnitude, slaney mel, log(clamp(x, 1e-5)).
    float32 [n_mels, len(audio)//hop]. Defaults: HiFiGAN V1 at 22050 Hz; a bundle passes its own."""
    y = np.asarray(audio, dtype=np.float64).reshape(-1)
    pad = (n_fft - hop) // 2
    y = np.pad(y, (pad, pad), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop]
    window = np.zeros(n_fft)
    off = (n_fft - win) // 2
    window[off:off + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    spec = np.fft.rfft(frames * window, axis=-1)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    mel = mel_basis(sr, n_fft, n_mels, fmin, fmax) @ mag.T.astype(np.float32)
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# recordings
# ----------------------------------------------------------------------------------------------


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    if sr_in == sr_out:
        return np.asarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(sr_in, sr_out)
    return resample_poly(np.asarray(audio, dtype=np.float64), sr_out // g, sr_in // g).astype(np.float32)


def _need(path: Path, package: str) -> Path:
    if not path.exists():
        raise ModelDirectoryError(f"quality speech {path} not found; install the Debian package: "
                                  f"sudo apt-get install {package}")
    return path


def _finish(name: str, language: str, audio: np.ndarray, seconds: float) -> Recording:
    audio = np.asarray(audio, dtype=np.float32)
    audio = audio[: int(min(seconds, MAX_SECONDS) * SAMPLE_RATE)]
    # Peak -3 dBFS: the vocoder's tanh output cannot follow a clipped reference anyway.
    audio = audio * (0.7 / max(float(np.abs(audio).max()), 1e-6))
    audio = audio[: len(audio) // HOP * HOP]
    return Recording(name, language, audio, log_mel(audio))


def _raw8k(name: str) -> np.ndarray:
    data = np.fromfile(_need(CODEC2 / name, "codec2-examples"), dtype="<i2").astype(np.float32) / 32768.0
    return resample(data, 8000)


def _trim(x: np.ndarray, sr: int, rel: float = 0.03, keep_s: float = 0.01) -> np.ndarray:
    """Drop leading/trailing silence below ``rel`` of the peak, keeping ``keep_s`` of margin."""
    idx = np.nonzero(np.abs(x) > rel * np.abs(x).max())[0]
    if idx.size == 0:
        return x
    k = int(keep_s * sr)
    return x[max(idx[0] - k, 0): idx[-1] + k]


def mandarin_phrase(voice: int = 5, seconds: float = MAX_SECONDS) -> Recording:
    """今天天气很好，我们去公园散步 from gcin-voice syllables: lightly trimmed, 8 ms crossfades, a short
    pause at the comma (an honest stand-in for connected Mandarin: real tones and initials)."""
    import soundfile as sf

    parts: list[np.ndarray] = []
    fade = int(0.008 * SAMPLE_RATE)
    for syl in MANDARIN_SYLLABLES:
        if syl == ",":
            parts.append(np.zeros(int(0.08 * SAMPLE_RATE), np.float32))
            continue
        x, sr = sf.read(str(_need(GCIN / syl / f"{voice}.ogg", "gcin-voice")), dtype="float32")
        x = x.mean(axis=1) if x.ndim == 2 else x
        x = resample(_trim(x, sr), sr)
        x = x / max(float(np.abs(x).max()), 1e-6)
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
        parts.append(x)
    return _finish("zh_gcin_phrase", "zh", np.concatenate(parts), seconds)


def english_16k(seconds: float = 3.5) -> Recording:
    """codec2's speech_orig_16k.wav (16 kHz English), first ``seconds``."""
    import soundfile as sf

    x, sr = sf.read(str(_need(CODEC2 / "speech_orig_16k.wav", "codec2-examples")), dtype="float32")
    x = x.mean(axis=1) if x.ndim == 2 else x
    return _finish("en_speech_orig_16k", "en", resample(x, sr), seconds)


def english_8k(name: str = "hts1a.raw", seconds: float = 3.0) -> Recording:
    """A codec2 8 kHz s16le raw (hts1a: male English); band-limited to 4 kHz, a harder input."""
    return _finish(f"en_{Path(name).stem}_8k", "en", _raw8k(name), seconds)


def hf_radio(seconds: float = MAX_SECONDS, start_s: float = 0.7) -> Recording:
    """codec2's ve9qrp_10s.raw: a radio amateur (VE9QRP) received over HF SSB, 8 kHz: speech ~300 Hz to
    3 kHz over the band's hiss, which also fills every pause (its quietest frames are -34 dB from the
    loudest, against -40 dB and below for the other recordings). The noisy recording: the vocoder
    re-synthesizes the hiss too, so variants differ from FP32 most here (docs/quality.md)."""
    return _finish("en_ve9qrp_hf_8k", "en", _raw8k("ve9qrp_10s.raw")[int(start_s * SAMPLE_RATE):], seconds)


def audiobook(seconds: float = MAX_SECONDS) -> Recording:
    """pocketsphinx-testdata's LibriVox clip 0920 of Sense and Sensibility (English, 16 kHz, decoded from a
    64 kbps MP3): an audiobook reader, a speaker none of the other recordings has."""
    import soundfile as sf

    path = POCKETSPHINX / "librivox" / "sense_and_sensibility_01_austen_64kb-0920.wav"
    x, sr = sf.read(str(_need(path, "pocketsphinx-testdata")), dtype="float32")
    x = x.mean(axis=1) if x.ndim == 2 else x
    return _finish("en_librivox_16k", "en", resample(x, sr), seconds)


def speech_set(kind: str = "gate") -> tuple[Recording, ...]:
    """``gate``: the five recordings the CI gate scores (five speakers, one of them noisy);
    ``calibration``: different speech for INT8 activation ranges (never the scored audio)."""
    if kind == "gate":
        return (mandarin_phrase(5), english_16k(), english_8k("hts1a.raw"), audiobook(), hf_radio())
    if kind == "calibration":
        import soundfile as sf

        x, sr = sf.read(str(_need(CODEC2 / "speech_orig_16k.wav", "codec2-examples")), dtype="float32")
        later = _finish("en_speech_orig_16k_tail", "en", resample(x[int(5 * sr):], sr), 3.0)
        return (mandarin_phrase(3, 3.0), later, english_8k("kristoff.raw", 3.0))
    raise ValueError(f"unknown speech set '{kind}' (gate or calibration)")
