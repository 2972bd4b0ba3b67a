"""Vocoder runtime: mel windows -> audio chunks with the exact receptive-field context (numpy + ORT)."""

from __future__ import annotations

import numpy as np

from .backends import BackendOptions, CancelToken, make_backend
from .chunking import Window
from .manifest import Manifest, VoiceManifest


class Vocoder:
    """The ``vocoder`` graph of one voice. Windows reach ``context_left`` frames back (and, for the
    non-causal generator, ``context_right`` ahead), so streamed audio equals whole-utterance audio.
    Each window carries its whole context, so windows are independent: any number may run at once,
    on any threads, and the samples are the same."""

    def __init__(self, manifest: Manifest, voice: VoiceManifest, backend: str = "cpu",
                 options: BackendOptions | None = None):
        self.info = voice.vocoder
        self.session = make_backend(backend, manifest.graph_path(voice, "vocoder"), options).open()

    def close(self) -> None:
        self.session.close()

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """Whole-utterance: mel f32 [F, num_mels] -> audio f32 [F * hop]."""
        return self._run(mel, True, None)

    def window(self, win: Window, token: CancelToken | None = None, validate: bool = False) -> np.ndarray:
        """Audio of the window's new rows: f32 [(b - a) * hop]."""
        hop = self.info.hop
        return self._run(win.frames, validate, token)[win.a * hop:win.b * hop]

    def _run(self, mel: np.ndarray, validate: bool, token: CancelToken | None) -> np.ndarray:
        feeds = {"mel": np.ascontiguousarray(mel.T[None], np.float32)}
        return self.session.run(feeds, validate=validate, token=token)["audio"].reshape(-1)
