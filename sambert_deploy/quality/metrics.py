"""Distances between two waveforms of the same vocoder (variant vs its FP32 output, or either vs the
recording). Log-mel L1 is the primary gate: a GAN vocoder's phase drifts under tiny numeric changes,
so waveform SNR punishes inaudible differences; it is reported for scale only."""

from __future__ import annotations

from typing import Any

import numpy as np

from .audio import SAMPLE_RATE, log_mel, resample

PESQ_RATE = 16000
QUIET_FRACTION = 0.2


class LengthMismatchError(ValueError):
    """Two signals of different lengths were given to a metric. A length difference is itself a gate
    failure (:class:`~sambert_deploy.runtime.manifest.ShapeMismatch`, found by the comparator before
    any metric runs): truncating to the shorter signal would hide a length regression."""


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float32).reshape(-1), np.asarray(b, np.float32).reshape(-1)
    if len(a) != len(b):
        raise LengthMismatchError(f"signals of {len(a)} and {len(b)} samples: a metric compares equal lengths "
                                  "(a length mismatch is a gate failure of its own, never truncated)")
    return a, b


def logmel_l1(ref: np.ndarray, deg: np.ndarray, **mel: Any) -> tuple[float, float]:
    """Mean |log mel(ref) - log mel(deg)| in nats: over all frames, and over the quietest
    :data:`QUIET_FRACTION` of frames by the reference's mel energy (where INT8 noise floors show).
    ``mel``: :func:`~.audio.log_mel` settings (default HiFiGAN V1's)."""
    ref, deg = _pair(ref, deg)
    mr, md = log_mel(ref, **mel), log_mel(deg, **mel)
    diff = np.abs(mr - md)
    energy = np.exp(mr).sum(axis=0)
    k = max(1, int(round(QUIET_FRACTION * energy.size)))
    quiet = np.argsort(energy, kind="stable")[:k]
    return float(diff.mean()), float(diff[:, quiet].mean())


def pesq_wb(ref: np.ndarray, deg: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """PESQ wide-band (ITU-T P.862.2) at 16 kHz; 4.64 is identical. Raises pesq's errors where it finds
    no utterance (random weights; see :func:`pesq_or_nan`)."""
    from pesq import pesq

    ref, deg = _pair(ref, deg)
    r16 = resample(ref, sr, PESQ_RATE).astype(np.float64)
    d16 = resample(deg, sr, PESQ_RATE).astype(np.float64)
    return float(pesq(PESQ_RATE, r16, d16, "wb"))


def snr_db(ref: np.ndarray, deg: np.ndarray) -> float:
    ref, deg = _pair(ref, deg)
    noise = float(np.sum((ref.astype(np.float64) - deg) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-20) / noise))


def pesq_or_nan(ref: np.ndarray, deg: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """:func:`pesq_wb`, NaN where PESQ cannot score (finds no utterance): a NaN fails any PESQ bound, so a
    gate that needs PESQ fails rather than skips. ``pesq`` not installed: MissingExtraError."""
    from ..errors import MissingExtraError

    try:
        return pesq_wb(ref, deg, sr)
    except ImportError as e:
        raise MissingExtraError(e.name or "pesq", "quantize") from None
    except LengthMismatchError:
        raise
    except Exception:  # pesq.NoUtterancesError, or its C code's ValueError on a silent signal
        return float("nan")


def audio_metrics(ref: np.ndarray, deg: np.ndarray, sr: int = SAMPLE_RATE, pesq: bool = True,
                  **mel: Any) -> dict[str, float]:
    """``deg`` against ``ref`` (equal lengths): log-mel L1 (all frames, quietest 20%), SNR (capped at 200 dB
    so a record stays finite JSON) and, with ``pesq``, PESQ-wb (NaN where PESQ cannot score).
    ``mel``: :func:`~.audio.log_mel` settings (``sr`` is passed to it too)."""
    l1, quiet = logmel_l1(ref, deg, sr=sr, **mel)
    out = {"logmel_l1": l1, "logmel_l1_quiet": quiet, "snr_db": min(snr_db(ref, deg), 200.0)}
    if pesq:
        out["pesq_vs_fp32"] = pesq_or_nan(ref, deg, sr)
    return out
