"""sambert-deploy: KAN-TTS Sambert + HiFiGAN from PyTorch checkpoints to streaming ONNX deployments."""

from __future__ import annotations

__version__ = "0.1.0"
