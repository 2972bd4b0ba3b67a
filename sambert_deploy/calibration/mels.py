"""Calibration data from the pipeline itself: a voice's own acoustic model over a text corpus.

Reduced-precision vocoders are calibrated (INT8 activation ranges) and checked on the mels the
vocoder will actually be fed, not on random tensors: :class:`CalibrationMels` runs the bundle's FP32
front end and acoustic model over sentences and yields one mel per sentence. It is re-iterable (a
quantizer walks it more than once), caches the mels next to the voice's graphs keyed by the corpus
and the acoustic graphs' hashes, and fails loudly when the corpus yields nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from ..runtime.acoustic import AM_GRAPHS
from ..runtime.manifest import Manifest, VoiceManifest

log = logging.getLogger(__name__)


def default_corpus() -> list[str]:
    """The packaged calibration sentences (written for this project)."""
    text = resources.files("sambert_deploy").joinpath("data/calibration_zh.txt").read_text("utf-8")
    return read_corpus_text(text)


def read_corpus_text(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_corpus(path: str | Path) -> list[str]:
    p = Path(path)
    try:
        sentences = read_corpus_text(p.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"calibration corpus {p} cannot be read ({e}); give a UTF-8 text file, one "
                                "sentence a line", param="corpus") from None
    if not sentences:
        raise InvalidInputError(f"calibration corpus {p} has no sentences; give a UTF-8 text file, one sentence "
                                "a line", param="corpus")
    return sentences


class CalibrationMels:
    """Mels f32 [frames, num_mels] of ``sentences`` spoken by ``voice`` (FP32 ONNX Runtime, CPU)."""

    def __init__(self, manifest: Manifest, voice: VoiceManifest, sentences: Sequence[str],
                 cache: bool = True):
        if not sentences:
            raise InvalidInputError("the calibration corpus is empty; give sentences (one a line)", param="corpus")
        self.manifest, self.voice, self.sentences = manifest, voice, list(sentences)
        self.cache_path = (manifest.root / voice.folder / f"calibration-{self.key()}.npz") if cache else None
        self._mels: list[np.ndarray] | None = None

    def key(self) -> str:
        h = hashlib.sha256()
        for g in AM_GRAPHS:
            h.update(self.voice.graphs[g].sha256.encode())
        h.update("\n".join(self.sentences).encode("utf-8"))
        return h.hexdigest()[:16]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.mels())

    def __len__(self) -> int:
        return len(self.mels())

    def mels(self) -> list[np.ndarray]:
        if self._mels is None:
            self._mels = self._load() or self._compute()
            if not self._mels:
                raise InvalidInputError(f"the calibration corpus gave no speech for voice '{self.voice.name}' "
                                        "(every sentence was empty after the front end)", param="corpus")
        return self._mels

    def _load(self) -> list[np.ndarray] | None:
        if self.cache_path is None or not self.cache_path.is_file():
            return None
        try:
            with np.load(self.cache_path) as z:
                mels = [z[f"m{i}"] for i in range(int(z["count"]))]
        except (OSError, ValueError, KeyError) as e:
            log.warning("calibration cache %s unreadable (%s); recomputing", self.cache_path, e)
            return None
        log.info("calibration mels: %d sentences from %s", len(mels), self.cache_path)
        return mels

    def _compute(self) -> list[np.ndarray]:
        from ..frontend import FrontEnd, FrontEndOptions
        from ..runtime.pipeline import OneShot
        from ..symbols import encode_units

        vm = self.voice
        fe = FrontEnd(FrontEndOptions(speaker=vm.speakers[0], speakers=vm.speakers))
        mels: list[np.ndarray] = []
        with OneShot(self.manifest, vm.name, backend="cpu") as one:
            for text in self.sentences:
                for units in fe.units(text):
                    mel = one.run(encode_units(units, vm.inventories)).mel
                    if len(mel):
                        mels.append(mel.astype(np.float32))
        if self.cache_path is not None and mels:
            tmp = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp.npz")
            np.savez_compressed(tmp, count=np.int64(len(mels)), **{f"m{i}": m for i, m in enumerate(mels)})
            os.replace(tmp, self.cache_path)
        log.info("calibration mels: %d sentences, %d frames", len(mels), sum(len(m) for m in mels))
        return mels

    def feeds(self, max_frames: int = 400) -> list[dict[str, np.ndarray]]:
        """Vocoder feeds ``{"mel": f32 [1, num_mels, F]}``, sentences cut to ``max_frames`` (the runtime's
        windows are shorter still) so calibration memory stays small."""
        return [{"mel": np.ascontiguousarray(m[:max_frames].T[None], np.float32)} for m in self.mels()]
