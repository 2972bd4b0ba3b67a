"""Distances between two waveforms of the same vocoder (variant vs its FP32 output, or either vs the
recording). Log-mel L1 is the primary gate: a GAN vocoder's phase drifts under tiny numeric changes,
so waveform SNR punishes inaudible differences; it is reported for scale only."""

from __future__ import annotations

from typing import Any

import numpy as np

from .audio import SAMPLE_RATE, log_mel, resample

PESQ_RATE = 16000
QUIET_FRACTION = 0.2


def _same_length(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float32).reshape(-1), np.asarray(b, np.float32).reshape(-1)
    n = min(len(a), len(b))
    return a[:n], b[:n]


def logmel_l1(ref: np.ndarray, deg: np.ndarray, **mel: Any) -> tuple[float, float]:
    """Mean |log mel(ref) - log mel(deg)| in nats: over all frames, and over the quietest
    :data:`QUIET_FRACTION` of frames by the reference's mel energy (where INT8 noise floors show).
    ``mel``: :func:`~.audio.log_mel` settings (default HiFiGAN V1's)."""
    ref, deg = _same_length(ref, deg)
    mr, md = log_mel(ref, **mel), log_mel(deg, **mel)
    diff = np.abs(mr - md)
    energy = np.exp(mr).sum(axis=0)
    k = max(1, int(round(QUIET_FRACTION * energy.size)))
    quiet = np.argsort(energy, kind="stable")[:k]
    return float(diff.mean()), float(diff[:, quiet].mean())


def pesq_wb(ref: np.ndarray, deg: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """PESQ wide-band (ITU-T P.862.2) at 16 kHz; 4.64 is identical."""
    from pesq import pesq

    ref, deg = _same_length(ref, deg)
    r16 = resample(ref, sr, PESQ_RATE).astype(np.float64)
    d16 = resample(deg, sr, PESQ_RATE).astype(np.float64)
    return float(pesq(PESQ_RATE, r16, d16, "wb"))


def snr_db(ref: np.ndarray, deg: np.ndarray) -> float:
    ref, deg = _same_length(ref, deg)
    noise = float(np.sum((ref.astype(np.float64) - deg) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-20) / noise))
