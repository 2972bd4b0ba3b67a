"""Vocoder runtime: mel windows -> audio chunks with the exact receptive-field context (numpy + ORT)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .backends import BackendOptions, CancelToken, make_backend
from .chunking import Window
from .manifest import Manifest, VoiceManifest
from .precision import VocoderChoice, choose_vocoder

SHAPE_BUCKET = 32  # frames: window lengths rounded up to a multiple where padding is exact


class Vocoder:
    """The ``vocoder`` graph of one voice. Windows reach ``context_left`` frames back (and, for the
    non-causal generator, ``context_right`` ahead), so streamed audio equals whole-utterance audio.
    Each window carries its whole context, so windows are independent: any number may run at once,
    on any threads, and the samples are the same."""

    def __init__(self, manifest: Manifest, voice: VoiceManifest, backend: str = "cpu",
                 options: BackendOptions | None = None, choice: VocoderChoice | None = None):
        """``choice`` (:func:`~.precision.choose_vocoder`) selects a reduced-precision variant and its
        backend; without it, the FP32 graph on ``backend``."""
        self.info = voice.vocoder
        self.choice = choice or choose_vocoder(voice, "fp32", backend, True, [backend])
        opts = replace(options or BackendOptions(), precision_hint=self.choice.hint)
        path = manifest.root / voice.folder / self.choice.graph.file
        self.session = make_backend(self.choice.backend, path, opts).open()

    def close(self) -> None:
        self.session.close()

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """Whole-utterance: mel f32 [F, num_mels] -> audio f32 [F * hop]."""
        return self._run(mel, True, None, pad_ok=self.info.causal)[:len(mel) * self.info.hop]

    def window(self, win: Window, token: CancelToken | None = None, validate: bool = False) -> np.ndarray:
        """Audio of the window's new rows: f32 [(b - a) * hop]."""
        hop = self.info.hop
        # Frames appended after a causal window change no earlier output. A non-causal window is
        # not padded: OpenVINO's outputs then moved by 1e-4 on the tiny test voice (kernel choice).
        return self._run(win.frames, validate, token, self.info.causal)[win.a * hop:win.b * hop]

    def _run(self, mel: np.ndarray, validate: bool, token: CancelToken | None, pad_ok: bool = False) -> np.ndarray:
        n = len(mel)
        if pad_ok and self.session.compiles_per_shape and n % SHAPE_BUCKET:
            # A backend that compiles every new length sees a handful of lengths instead of one per
            # sentence end (measured on OpenVINO: a new 121-frame window 339 ms, a seen one 139 ms).
            mel = np.concatenate([mel, np.zeros((SHAPE_BUCKET - n % SHAPE_BUCKET, mel.shape[1]), mel.dtype)])
        feeds = {"mel": np.ascontiguousarray(mel.T[None], np.float32)}
        return self.session.run(feeds, validate=validate, token=token)["audio"].reshape(-1)
