"""A context model for Mandarin polyphones: g2pM's BiLSTM (Park & Lee, Interspeech 2020), run in numpy.

g2pM (PyPI ``g2pM``, Apache-2.0, github.com/kakaobrain/g2pM) ships its weights in its wheel: a character
embedding (5,398 x 64), one bidirectional LSTM layer (32 units per direction) and two dense layers over 876
toned pinyin classes, trained on the CPP data set (Chinese Polyphones with Pinyin, from Wikipedia). Nothing
is downloaded. The weights are read from the installed package; inference is re-implemented here so that the
whole sentence's polyphones come out of one pass (g2pM's own ``__call__`` also converts the rest of the
sentence, which the front end does itself) and so that a prediction carries its probability and is chosen
among the character's own readings (g2pM takes the argmax over all 876 classes: 了 could come out as hao3).

The front end calls :func:`load` once; when g2pM is not installed it returns None, logs that once, and the
rules alone decide (:mod:`.g2p`).
"""

from __future__ import annotations

import logging
import pickle
import threading
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_UNK, _BOS, _EOS = "<UNK>", "시", "끝"  # g2pM's own unknown, begin and end tokens


@dataclass(frozen=True)
class Prediction:
    """The model's reading of one polyphonic character: ``reading`` in the front end's spelling
    (``lv4``, ``nve4``), ``prob`` its softmax probability among the character's own readings."""

    reading: str
    prob: float


def _our_spelling(py: str) -> str:
    # CC-CEDICT writes ü as 'u:' (lu:4, nu:e4); the front end's pinyin writes v (lv4, nve4)
    return py.replace("u:", "v")


class PolyphoneModel:
    """g2pM's BiLSTM over a Han string. Weights float32, as g2pM stores them.

    ``predict(text)`` -> {index in text: :class:`Prediction`} for the characters CC-CEDICT gives several
    readings (g2pM's notion of a polyphone). One forward pass per call: the embedding lookup and the input
    projections of all time steps are single matrix products; only the recurrences are loops (T steps of a
    [1,32] x [32,128] product per direction).
    """

    def __init__(self, weights: dict[str, np.ndarray], char2idx: dict[str, int], class2idx: dict[str, int],
                 cedict: dict[str, list[str]]) -> None:
        w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.emb = w["embedding.weight"]  # [V, 64]
        self.w_ih = (w["lstm.weight_ih_l0"], w["lstm.weight_ih_l0_reverse"])  # [128, 64] each, gates i f g o
        self.w_hh = (w["lstm.weight_hh_l0"], w["lstm.weight_hh_l0_reverse"])  # [128, 32]
        self.b = (w["lstm.bias_ih_l0"] + w["lstm.bias_hh_l0"],
                  w["lstm.bias_ih_l0_reverse"] + w["lstm.bias_hh_l0_reverse"])  # [128]
        self.fc0 = (w["logit_layer.0.weight"], w["logit_layer.0.bias"])  # [32, 64], [32]
        self.fc1 = (w["logit_layer.2.weight"], w["logit_layer.2.bias"])  # [876, 32], [876]
        self.char2idx = char2idx
        self.unk = char2idx[_UNK]
        self.bos, self.eos = char2idx[_BOS], char2idx[_EOS]
        self.classes = [""] * len(class2idx)
        for py, i in class2idx.items():
            self.classes[i] = _our_spelling(py)
        # per polyphonic character: the class ids of its readings (those the classifier knows)
        self.candidates: dict[str, np.ndarray] = {}
        for ch, prons in cedict.items():
            ids = sorted({class2idx[p] for p in prons if p in class2idx})
            if len(prons) > 1 and ids:
                self.candidates[ch] = np.asarray(ids, dtype=np.int64)

    def is_polyphone(self, ch: str) -> bool:
        return ch in self.candidates

    def hidden(self, text: str) -> np.ndarray:
        """[len(text), 64] float32: forward and backward LSTM states of each character (BOS/EOS around)."""
        ids = np.asarray([self.bos, *(self.char2idx.get(c, self.unk) for c in text), self.eos], dtype=np.int64)
        x = self.emb[ids]  # [T, 64]
        n = x.shape[0]
        out = np.empty((n, 64), dtype=np.float32)
        for d in (0, 1):
            xs = x @ self.w_ih[d].T + self.b[d]  # [T, 128]
            whh = self.w_hh[d].T
            h = np.zeros(32, dtype=np.float32)
            c = np.zeros(32, dtype=np.float32)
            steps = range(n) if d == 0 else range(n - 1, -1, -1)
            for t in steps:
                z = xs[t] + h @ whh
                i, f, o = _sigmoid(z[0:32]), _sigmoid(z[32:64]), _sigmoid(z[96:128])
                c = f * c + i * np.tanh(z[64:96])
                h = o * np.tanh(c)
                out[t, 32 * d : 32 * d + 32] = h
        return out[1:-1]

    def logits(self, states: np.ndarray) -> np.ndarray:
        """[N, 64] -> [N, 876] class logits."""
        hid = np.maximum(states @ self.fc0[0].T + self.fc0[1], 0.0)
        return hid @ self.fc1[0].T + self.fc1[1]  # type: ignore[no-any-return]

    def predict(self, text: str) -> dict[int, Prediction]:
        pos = [k for k, c in enumerate(text) if c in self.candidates]
        if not pos:
            return {}
        logits = self.logits(self.hidden(text)[pos])
        out = {}
        for row, k in zip(logits, pos, strict=True):
            cand = self.candidates[text[k]]
            z = row[cand] - row[cand].max()
            p = np.exp(z) / np.exp(z).sum()
            j = int(p.argmax())
            out[k] = Prediction(self.classes[int(cand[j])], float(p[j]))
        return out

    @classmethod
    def from_package(cls, folder: Path) -> PolyphoneModel:
        """Load the weights of an installed g2pM (its package folder). Pickles from an installed package run
        with the same trust as importing its code."""

        def load(name: str) -> Any:
            with open(folder / name, "rb") as f:
                return pickle.load(f)  # noqa: S301

        return cls(load("np_ckpt.pkl"), load("char2idx.pkl"), load("class2idx.pkl"), load("digest_cedict.pkl"))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))  # type: ignore[no-any-return]


_lock = threading.Lock()
_model: PolyphoneModel | None = None
_tried = False


def package_folder() -> Path | None:
    """Where g2pM is installed (found without importing it), or None."""
    spec = importlib_util.find_spec("g2pM")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def load() -> PolyphoneModel | None:
    """The polyphone model, loaded on first use; None (said once, at WARNING) when g2pM is not installed or
    its files cannot be read: the front end then resolves polyphones by its rules alone."""
    global _model, _tried
    if not _tried:
        with _lock:
            if not _tried:
                folder = package_folder()
                if folder is None:
                    logger.warning("g2pM is not installed: polyphones are read by rules only "
                                   "(pip install g2pM for the context model)")
                else:
                    try:
                        _model = PolyphoneModel.from_package(folder)
                    except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as e:
                        logger.warning("g2pM's weights in %s could not be read (%s): polyphones are read by "
                                       "rules only", folder, e)
                _tried = True
    return _model
