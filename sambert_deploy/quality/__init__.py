"""Precision quality gate on a real vocoder (the pretrained universal HiFiGAN V1) fed mels of real
speech; every metric is against the FP32 output of the same network, judged recording by recording
by :data:`sambert_deploy.gates.PRECISION_GATES`. Imports torch (export side) where it exports the
real vocoder; the runtime never imports this package."""

from .audio import Recording, log_mel, speech_set
from .harness import (
    Fp32Reference,
    QualityReport,
    RecordingScore,
    clip_table,
    evaluate,
    fp32_reference,
    markdown_table,
    open_backend,
    score,
)
from .vocoder import RealVocoder, real_vocoder

__all__ = ["Fp32Reference", "QualityReport", "RealVocoder", "Recording", "RecordingScore", "clip_table", "evaluate",
           "fp32_reference", "log_mel", "markdown_table", "open_backend", "real_vocoder", "score", "speech_set"]
