"""Precision quality gate on a real vocoder (the pretrained universal HiFiGAN V1) fed mels of real
speech; every metric is against the FP32 output of the same network. Imports torch (export side);
the runtime never imports this package."""

from .audio import Recording, log_mel, speech_set
from .harness import (
    GATES,
    Fp32Reference,
    Gate,
    QualityReport,
    RecordingScore,
    evaluate,
    fp32_reference,
    markdown_table,
    open_backend,
    score,
)
from .vocoder import RealVocoder, real_vocoder

__all__ = ["GATES", "Fp32Reference", "Gate", "QualityReport", "RealVocoder", "Recording", "RecordingScore", "evaluate",
           "fp32_reference", "log_mel", "markdown_table", "open_backend", "real_vocoder", "score", "speech_set"]
