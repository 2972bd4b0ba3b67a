"""Vocoder runtime: mel chunks -> audio chunks with the exact receptive-field context (numpy + ORT)."""

from __future__ import annotations

import queue
import threading
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

        ``workers`` > 1 runs up to that many windows at once. Each window carries its whole context,
        so windows are independent and the output is the same as with one worker; on CPU this is how
        the vocoder uses a second core (ORT's intra-op threads scale poorly on these convolutions:
        2 threads run a 291-frame window only 1.31x faster than one).
        """
        hop = self.info.hop
        windows = context_windows(mels, total, chunk, self.info.context_left, self.info.context_right, first_chunk)
        if workers <= 1:
            for k, (win, a, b, last) in enumerate(windows):
                yield self._run(win, k == 0)[a * hop:b * hop], last
            return
        yield from self._parallel(windows, workers)

    def _parallel(self, windows: Iterator[tuple[np.ndarray, int, int, bool]],
                  workers: int) -> Iterator[tuple[np.ndarray, bool]]:
        """A feeder thread reads windows (it waits on the acoustic model) and submits them while
        fewer than ``workers`` are in flight; this generator hands each result on, in order, as soon
        as it is ready, so a finished window never waits for the next one's mel frames."""
        hop = self.info.hop
        slots = threading.Semaphore(workers)  # windows submitted and not yet handed on
        order: queue.Queue[tuple[Future[np.ndarray], int, int, bool] | BaseException | None] = queue.Queue()
        stop = threading.Event()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="sambert-vocoder")

        def feed() -> None:
            try:
                for k, (win, a, b, last) in enumerate(windows):
                    while not slots.acquire(timeout=0.1):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    order.put((pool.submit(self._run, win, k == 0), a, b, last))
                order.put(None)
            except BaseException as e:  # the acoustic model's errors too; raised in the consumer
                order.put(e)
            finally:
                # Only this thread may close the window generator (it may be inside it); closing
                # it here stops the acoustic worker now, not whenever the collector gets to it.
                close = getattr(windows, "close", None)
                if close is not None:
                    close()

        feeder = threading.Thread(target=feed, name="sambert-vocoder-feed", daemon=True)
        feeder.start()
        try:
            while (item := order.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                fut, a, b, last = item
                audio = fut.result()
                slots.release()
                yield audio[a * hop:b * hop], last
        finally:
            stop.set()
            # Running windows finish (bounded: at most ``workers``); a feeder still waiting on mel
            # frames sees ``stop`` when they come and exits without submitting more.
            pool.shutdown(wait=True, cancel_futures=True)
