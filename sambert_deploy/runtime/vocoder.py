"""Vocoder runtime: mel windows -> audio chunks with the exact receptive-field context (numpy + ORT)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
from .batching import VocoderGroup
from .chunking import Window
from .manifest import Manifest, VoiceManifest
from .precision import VocoderChoice, choose_vocoder

log = logging.getLogger(__name__)

SHAPE_BUCKET = 32  # frames: the smallest padded window; longer ones double up to the regular window


class Vocoder:
    """The ``vocoder`` graph of one voice. Windows reach ``context_left`` frames back (and, for the
    non-causal generator, ``context_right`` ahead), so streamed audio equals whole-utterance audio.
    Each window carries its whole context, so windows are independent: any number may run at once,
    on any threads, and the samples are the same."""

    def __init__(self, manifest: Manifest, voice: VoiceManifest, backend: str = "cpu",
                 options: BackendOptions | None = None, choice: VocoderChoice | None = None,
                 window_frames: int | None = None, max_calls: int = 2, max_batch: int = 1):
        """``choice`` (:func:`~.precision.choose_vocoder`) selects a reduced-precision variant and its
        backend; without it, the FP32 graph on ``backend``. ``window_frames``: the streams' regular
        window (chunk plus context), the largest length a shape-compiling backend is padded to and a
        TensorRT engine's profile must cover. ``max_calls``: calls in flight on a GPU (TensorRT
        execution contexts). ``max_batch``: windows of several streams run as one call (:attr:`group`)
        where the graph can (:attr:`batches`); 1 runs each window alone."""
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
        self.group = VocoderGroup(self, max_batch) if max_batch > 1 and self.batches else None
        if max_batch > 1 and self.group is None:
            why = ("a non-causal vocoder would hear the padding" if not self.info.causal else
                   f"{self.choice.backend} runs one window per call" if self.choice.backend == "tensorrt"
                   or self.session.compiles_per_shape else "the graph has no batch axis: re-export the bundle")
            log.info("voice %s: vocoder windows run one per call (%s)", voice.name, why)

    @property
    def batches(self) -> bool:
        """Whether windows of several streams can run as one call: the graph has the batch axis (bundles
        exported before it do not), the vocoder is causal (a window padded at its end keeps its output;
        a non-causal one would see the padding) and the backend takes any shape as it comes (not
        TensorRT, whose engine's profile is built for one window, nor OpenVINO, which would compile every
        new batch x length)."""
        return (self.info.causal and self.choice.backend != "tensorrt" and not self.session.compiles_per_shape
                and not isinstance(self.session.inputs["mel"].shape[0], int))

    @property
    def max_batch(self) -> int:
        """Windows per call: the group's, or 1."""
        return self.group.max_batch if self.group is not None else 1

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

    def windows(self, wins: Sequence[Window], token: CancelToken | None = None,
                validate: bool = False) -> list[np.ndarray]:
        """Audio of each window's new rows, the windows run as one call of the batch axis (each padded at
        its end to the longest, rounded up to a shape bucket; see :attr:`batches`). One window runs as
        :meth:`window`."""
        if len(wins) == 1:
            return [self.window(wins[0], token, validate)]
        if not self.batches:
            raise ValueError(f"the {self.choice.graph.file} vocoder cannot run windows as one call")
        hop = self.info.hop
        # A handful of lengths per batch size, not one per mix of windows: the CUDA EP's arena grows with
        # every new input shape (the GPU run, README), and a GPU's extra frames cost next to nothing.
        n = self.bucket(max(len(w.frames) for w in wins))
        mel = np.zeros((len(wins), self.info.in_channels, n), np.float32)
        for i, w in enumerate(wins):
            mel[i, :, :len(w.frames)] = w.frames.T
        audio = self.session.run({"mel": mel}, validate=validate, token=token)["audio"]
        return [np.ascontiguousarray(audio[i, 0, w.a * hop:w.b * hop]) for i, w in enumerate(wins)]

    def _run(self, mel: np.ndarray, validate: bool, token: CancelToken | None, pad_ok: bool = False) -> np.ndarray:
        n = len(mel)
        if pad_ok and self.session.compiles_per_shape:
            # A backend that compiles every new length sees a handful of lengths instead of one per
            # sentence end (OpenVINO: a new 121-frame window took 339 ms, a seen one 139 ms), and
            # keeps memory per length it has seen (about 55 MB each for the full-size vocoder with
            # two requests): 32, 64, 128, ... frames below the regular window, then the window itself.
            size = self.bucket(n)
            if size > n:
                mel = np.concatenate([mel, np.zeros((size - n, mel.shape[1]), mel.dtype)])
        feeds = {"mel": np.ascontiguousarray(mel.T[None], np.float32)}
        return self.session.run(feeds, validate=validate, token=token)["audio"].reshape(-1)

    def bucket(self, n: int) -> int:
        """The frames a call whose longest window has ``n`` runs at where lengths are bucketed (a batched
        call, and every call on a backend that compiles per shape): 32, 64, ... below the regular window,
        then the window itself; a longer input (a whole utterance) rounds up to a multiple of 32."""
        full = self.window_frames
        if full is None or n > full:  # no regular window (one-shot), or a whole utterance
            return -(-n // SHAPE_BUCKET) * SHAPE_BUCKET
        size = SHAPE_BUCKET
        while size < n and 2 * size < full:
            size *= 2
        return size if size >= n else full
