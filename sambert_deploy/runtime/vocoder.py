"""Vocoder runtime: mel windows -> audio chunks with the exact receptive-field context (numpy + ORT)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .backends import (
    Backend,
    BackendOptions,
    CancelToken,
    EngineTarget,
    TensorRTBackend,
    engine_path,
    make_backend,
)
from .chunking import Window
from .manifest import Manifest, VoiceManifest
from .precision import VocoderChoice, choose_vocoder

SHAPE_BUCKET = 32  # frames: the smallest padded window; longer ones double up to the regular window


class Vocoder:
    """The ``vocoder`` graph of one voice. Windows reach ``context_left`` frames back (and, for the
    non-causal generator, ``context_right`` ahead), so streamed audio equals whole-utterance audio.
    Each window carries its whole context, so windows are independent: any number may run at once,
    on any threads, and the samples are the same."""

    def __init__(self, manifest: Manifest, voice: VoiceManifest, backend: str = "cpu",
                 options: BackendOptions | None = None, choice: VocoderChoice | None = None,
                 window_frames: int | None = None, max_calls: int = 2):
        """``choice`` (:func:`~.precision.choose_vocoder`) selects a reduced-precision variant and its
        backend; without it, the FP32 graph on ``backend``. ``window_frames``: the streams' regular
        window (chunk plus context), the largest length a shape-compiling backend is padded to and a
        TensorRT engine's profile must cover. ``max_calls``: calls in flight on a GPU (TensorRT
        execution contexts)."""
        self.info = voice.vocoder
        self.window_frames = window_frames
        self.choice = choice or choose_vocoder(voice, "fp32", backend, True, [backend])
        opts = replace(options or BackendOptions(), precision_hint=self.choice.hint)
        if self.choice.backend == "tensorrt":
            mels = self.info.in_channels
            target = EngineTarget(self.choice.precision, self.choice.graph.sha256,
                                  {"mel": ((1, mels, 1), (1, mels, window_frames or 1))})
            self.session: Backend = TensorRTBackend(engine_path(manifest.root, voice.name, self.choice.graph.file),
                                                    opts, target, max_contexts=max_calls).open()
        else:
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
        if pad_ok and self.session.compiles_per_shape:
            # A backend that compiles every new length sees a handful of lengths instead of one per
            # sentence end (OpenVINO: a new 121-frame window took 339 ms, a seen one 139 ms), and
            # keeps memory per length it has seen (about 55 MB each for the full-size vocoder with
            # two requests): 32, 64, 128, ... frames below the regular window, then the window itself.
            size = self._bucket(n)
            if size > n:
                mel = np.concatenate([mel, np.zeros((size - n, mel.shape[1]), mel.dtype)])
        feeds = {"mel": np.ascontiguousarray(mel.T[None], np.float32)}
        return self.session.run(feeds, validate=validate, token=token)["audio"].reshape(-1)

    def _bucket(self, n: int) -> int:
        full = self.window_frames
        if full is None or n > full:  # no regular window (one-shot), or a whole utterance
            return -(-n // SHAPE_BUCKET) * SHAPE_BUCKET
        size = SHAPE_BUCKET
        while size < n and 2 * size < full:
            size *= 2
        return size if size >= n else full
