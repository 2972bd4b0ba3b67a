"""One-shot pipeline (what the parity gate runs): encoded units -> mel -> waveform, whole sentence.

It is the streaming machinery with chunks as large as the sentence (the same
:class:`~.acoustic.SentenceAcoustic` state the streams advance), so the gate checks the code the
streaming runtime uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..symbols import EncodedUnits, encode_symbols
from .acoustic import AcousticModel
from .backends import BackendOptions, available_backends, cpu_flags
from .manifest import Manifest, read_manifest
from .precision import choose_vocoder
from .vocoder import Vocoder


@dataclass
class OneShotResult:
    mel: np.ndarray  # f32 [valid_frames, num_mels]
    audio: np.ndarray  # f32 [valid_frames * hop]
    reps: np.ndarray  # int64 [U]
    durations: np.ndarray  # f32 [U], unrounded
    band: int


class OneShot:
    def __init__(self, bundle: Manifest | str | Path, voice: str | None = None, backend: str = "cpu",
                 options: BackendOptions | None = None, precision: str = "fp32", voc_backend: str | None = None):
        """``precision``/``voc_backend``: the vocoder variant and its backend, as a Synthesizer would
        choose them (a reduced-precision stream is compared with its own one-shot output)."""
        self.manifest = bundle if isinstance(bundle, Manifest) else read_manifest(bundle)
        self.voice = self.manifest.voice(voice)
        self.am = AcousticModel(self.manifest, self.voice, backend, options)
        vb = voc_backend or backend
        choice = choose_vocoder(self.voice, precision, vb, voc_backend is not None, available_backends(), cpu_flags())
        self.voc = Vocoder(self.manifest, self.voice, choice.backend, options, choice)

    def __enter__(self) -> OneShot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.am.close()
        self.voc.close()

    def run(self, units: EncodedUnits | str, durations: np.ndarray | None = None,
            duration_scale: float = 1.0) -> OneShotResult:
        if isinstance(units, str):
            units = encode_symbols(units, self.voice.inventories)
        plan = self.am.plan(units, durations, duration_scale)
        total = plan.valid_frames
        n_mels = self.voice.acoustic.num_mels
        if total == 0:
            return OneShotResult(np.zeros((0, n_mels), np.float32), np.zeros(0, np.float32), plan.reps,
                                 plan.durations, plan.band)
        sentence = self.am.sentence(plan, postnet_chunk=total)
        mel = sentence.next_block()
        audio = self.voc(mel)
        return OneShotResult(mel, audio, plan.reps, plan.durations, plan.band)
