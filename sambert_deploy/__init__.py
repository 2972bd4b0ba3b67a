"""sambert-deploy: KAN-TTS Sambert + HiFiGAN from PyTorch checkpoints to streaming ONNX deployments.

The runtime API is re-exported here (imported on first use, so ``import sambert_deploy`` stays light)::

    from sambert_deploy import Synthesizer, SpeechOptions
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_RUNTIME = ("AudioChunk", "Mark", "SpeechOptions", "Stream", "StreamInfo", "StreamOptions", "Synthesizer",
            "TimedSpeech")
__all__ = ["__version__", *_RUNTIME]

if TYPE_CHECKING:
    from .runtime.synthesizer import (  # noqa: F401 - re-exported
        AudioChunk,
        Mark,
        SpeechOptions,
        Stream,
        StreamInfo,
        StreamOptions,
        Synthesizer,
        TimedSpeech,
    )


def __getattr__(name: str) -> Any:
    if name in _RUNTIME:
        from .runtime import synthesizer

        return getattr(synthesizer, name)
    raise AttributeError(f"module 'sambert_deploy' has no attribute {name!r}")
