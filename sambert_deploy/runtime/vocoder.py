"""Vocoder runtime: mel chunks -> audio chunks with the exact receptive-field context (numpy + ORT)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .acoustic import context_windows
from .backends import BackendOptions, make_backend
from .manifest import Manifest, VoiceManifest


class Vocoder:
    """The ``vocoder`` graph of one voice. Chunks reach ``context_left`` frames back (and, for the
    non-causal generator, ``context_right`` ahead), so streamed audio equals whole-utterance audio."""

    def __init__(self, manifest: Manifest, voice: VoiceManifest, backend: str = "cpu",
                 options: BackendOptions | None = None):
        self.info = voice.vocoder
        self.session = make_backend(backend, manifest.graph_path(voice, "vocoder"), options).open()

    def close(self) -> None:
        self.session.close()

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """Whole-utterance: mel f32 [F, num_mels] -> audio f32 [F * hop]."""
        return self.session.run({"mel": np.ascontiguousarray(mel.T[None], np.float32)})["audio"].reshape(-1)

    def stream(self, mels: Iterator[np.ndarray], total: int, chunk: int = 64,
               first_chunk: int | None = None) -> Iterator[tuple[np.ndarray, bool]]:
        """mel blocks ([n, num_mels], ``total`` frames in all) -> (audio block f32, is_last) pairs."""
        hop = self.info.hop
        for k, (win, a, b, last) in enumerate(context_windows(mels, total, chunk, self.info.context_left,
                                                        self.info.context_right, first_chunk)):
            audio = self.session.run({"mel": np.ascontiguousarray(win.T[None], np.float32)}, validate=k == 0)["audio"]
            yield audio[0, 0, a * hop:b * hop], last
