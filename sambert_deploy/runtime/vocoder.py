"""Vocoder runtime: mel chunks -> audio chunks with the exact receptive-field context (numpy + ORT)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

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
        return self._run(mel, True)

    def _run(self, mel: np.ndarray, validate: bool) -> np.ndarray:
        feeds = {"mel": np.ascontiguousarray(mel.T[None], np.float32)}
        return self.session.run(feeds, validate=validate)["audio"].reshape(-1)

    def stream(self, mels: Iterator[np.ndarray], total: int, chunk: int = 64, first_chunk: int | None = None,
               workers: int = 1) -> Iterator[tuple[np.ndarray, bool]]:
        """mel blocks ([n, num_mels], ``total`` frames in all) -> (audio block f32, is_last) pairs.

        ``workers`` > 1 runs that many windows at once. Each window carries its whole context, so
        windows are independent and the output is the same as with one worker; on CPU this is how
        the vocoder uses a second core (ORT's intra-op threads scale poorly on its small convolutions:
        measured 1.31x for 2 threads on 2 cores, against ~2x for two single-threaded windows).
        """
        hop = self.info.hop
        windows = context_windows(mels, total, chunk, self.info.context_left, self.info.context_right, first_chunk)
        if workers <= 1:
            for k, (win, a, b, last) in enumerate(windows):
                yield self._run(win, k == 0)[a * hop:b * hop], last
            return
        pending: deque[tuple[Future[np.ndarray], int, int, bool]] = deque()
        with ThreadPoolExecutor(workers, thread_name_prefix="sambert-vocoder") as pool:
            for k, (win, a, b, last) in enumerate(windows):
                pending.append((pool.submit(self._run, win, k == 0), a, b, last))
                # Wait on the oldest window when all workers are busy, and on a sentence's first
                # window at once (first-audio latency), otherwise go on reading mel frames.
                while pending and (len(pending) >= workers or k == 0 or pending[0][0].done()):
                    fut, a0, b0, last0 = pending.popleft()
                    yield fut.result()[a0 * hop:b0 * hop], last0
            while pending:
                fut, a0, b0, last0 = pending.popleft()
                yield fut.result()[a0 * hop:b0 * hop], last0
