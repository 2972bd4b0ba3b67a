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
        self._session: Any = None

    def use_onnxruntime(self) -> None:
        """Run the forward pass as an ONNX graph (:func:`onnx_model`) in onnxruntime from now on; on any
        failure keep numpy, saying why once."""
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 1  # a few hundred multiply-adds per step: threads only add latency
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            self._session = ort.InferenceSession(onnx_model(self), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - any ORT failure leaves the numpy path, which is exact
            logger.warning("polyphone model: onnxruntime session not built (%s); numpy runs it", e)
            self._session = None

    def use_numpy(self) -> None:
        """Run the forward pass in numpy from now on (for comparisons)."""
        self._session = None

    @property
    def backend(self) -> str:
        return "numpy" if self._session is None else "onnxruntime"

    def is_polyphone(self, ch: str) -> bool:
        return ch in self.candidates

    def hidden(self, text: str) -> np.ndarray:
        """[len(text), 64] float32: forward and backward LSTM states of each character (BOS/EOS around)."""
        x = self.emb[self.ids(text)]  # [T, 64]
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

    def ids(self, text: str) -> np.ndarray:
        """[len(text) + 2] int64: BOS, the characters' ids (unknown ones as g2pM's <UNK>), EOS."""
        return np.asarray([self.bos, *(self.char2idx.get(c, self.unk) for c in text), self.eos], dtype=np.int64)

    def numpy_logits(self, text: str, pos: list[int]) -> np.ndarray:
        """[len(pos), 876] logits of the characters at ``pos``, in numpy (the reference forward pass)."""
        return self.logits(self.hidden(text)[pos])

    def polyphone_logits(self, text: str, pos: list[int]) -> np.ndarray:
        """:meth:`numpy_logits` through onnxruntime when its session could be built (the same numbers to
        ~1e-5, ~6x faster: the recurrences run in ORT's LSTM kernel instead of a Python loop)."""
        session = self._session
        if session is not None:
            try:
                out = session.run(None, {"ids": self.ids(text), "pos": np.asarray(pos, dtype=np.int64) + 1})
                return out[0]  # type: ignore[no-any-return]
            except Exception as e:  # noqa: BLE001 - the numpy pass computes the same; never fail a sentence
                logger.warning("polyphone model: onnxruntime failed (%s); numpy runs it from now on", e)
                self._session = None
        return self.numpy_logits(text, pos)

    def predict(self, text: str, only: list[int] | None = None) -> dict[int, Prediction]:
        """Readings of the polyphones of ``text`` (of those at the indices ``only`` when given)."""
        pos = [k for k, c in enumerate(text) if c in self.candidates and (only is None or k in only)]
        if not pos:
            return {}
        logits = self.polyphone_logits(text, pos)
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
                        _model.use_onnxruntime()
                    except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as e:
                        logger.warning("g2pM's weights in %s could not be read (%s): polyphones are read by "
                                       "rules only", folder, e)
                _tried = True
    return _model


# --- the same network as an ONNX graph ----------------------------------------------------------------------
#
# Written as protobuf bytes here (the ONNX ModelProto schema, onnx/onnx.proto: field numbers below) so that
# the runtime needs neither the ``onnx`` package nor a file in the bundle: 11 nodes and 8 weight tensors,
# built in ~1 ms at first use. tests/frontend/test_polyphone.py checks the graph with onnx.checker and its
# outputs against the numpy forward pass.

_FLOAT, _INT64 = 1, 7  # TensorProto.DataType
_ATTR_INT, _ATTR_STRING, _ATTR_INTS = 2, 3, 7  # AttributeProto.AttributeType


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _int(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _bytes(field: int, data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def _tensor(name: str, a: np.ndarray) -> bytes:
    dtype = {np.dtype(np.float32): _FLOAT, np.dtype(np.int64): _INT64}[a.dtype]
    dims = b"".join(_int(1, d) for d in a.shape)
    return dims + _int(2, dtype) + _bytes(8, name) + _bytes(9, np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())


def _attr(name: str, value: int | str | list[int]) -> bytes:
    if isinstance(value, str):
        return _bytes(1, name) + _bytes(4, value) + _int(20, _ATTR_STRING)
    if isinstance(value, list):
        return _bytes(1, name) + b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)
    return _bytes(1, name) + _int(3, value) + _int(20, _ATTR_INT)


def _node(op: str, inputs: list[str], outputs: list[str], **attrs: int | str | list[int]) -> bytes:
    body = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    body += _bytes(4, op) + b"".join(_bytes(5, _attr(k, v)) for k, v in attrs.items())
    return _bytes(1, body)


def _value_info(field: int, name: str, elem: int, dims: list[int | str]) -> bytes:
    shape = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in dims)
    tensor_type = _int(1, elem) + _bytes(2, shape)
    return _bytes(field, _bytes(1, name) + _bytes(2, _bytes(1, tensor_type)))


def _onnx_gates(w: np.ndarray) -> np.ndarray:
    """PyTorch's LSTM gate blocks (i, f, g, o) -> ONNX's (i, o, f, c)."""
    i, f, g, o = np.split(w, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def onnx_model(m: PolyphoneModel) -> bytes:
    """The network as a serialized ONNX model (opset 17).

    Inputs: ``ids`` [num_chars] int64 (:meth:`PolyphoneModel.ids`, BOS and EOS included); ``pos``
    [num_polyphones] int64, indices into ``ids``. Output: ``logits`` [num_polyphones, 876] float32.
    """
    n_cls = m.fc1[0].shape[0]
    weights = {
        "emb": m.emb,
        "W": np.stack([_onnx_gates(w) for w in m.w_ih]),  # [2, 128, 64]
        "R": np.stack([_onnx_gates(w) for w in m.w_hh]),  # [2, 128, 32]
        # ONNX adds Wb and Rb; the input and recurrent biases are already summed in m.b
        "B": np.stack([np.concatenate([_onnx_gates(b), np.zeros_like(b)]) for b in m.b]),  # [2, 256]
        "fc0_w": np.ascontiguousarray(m.fc0[0].T), "fc0_b": m.fc0[1],
        "fc1_w": np.ascontiguousarray(m.fc1[0].T), "fc1_b": m.fc1[1],
        "shape_tbd": np.asarray([-1, 1, 64], dtype=np.int64),
        "shape_td": np.asarray([-1, 64], dtype=np.int64),
    }
    nodes = [
        _node("Gather", ["emb", "ids"], ["x"]),
        _node("Reshape", ["x", "shape_tbd"], ["x3"]),  # [T, batch 1, 64]
        _node("LSTM", ["x3", "W", "R", "B"], ["y"], direction="bidirectional", hidden_size=32),
        _node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),  # [T, 2, 1, 32] -> [T, 1, 2, 32]
        _node("Reshape", ["yt", "shape_td"], ["h"]),  # [T, 64]: forward then backward, as numpy
        _node("Gather", ["h", "pos"], ["hp"]),
        _node("MatMul", ["hp", "fc0_w"], ["a0"]),
        _node("Add", ["a0", "fc0_b"], ["a1"]),
        _node("Relu", ["a1"], ["a2"]),
        _node("MatMul", ["a2", "fc1_w"], ["a3"]),
        _node("Add", ["a3", "fc1_b"], ["logits"]),
    ]
    graph = b"".join(nodes) + _bytes(2, "g2pM_polyphones")
    graph += b"".join(_bytes(5, _tensor(k, np.asarray(v))) for k, v in weights.items())
    graph += _value_info(11, "ids", _INT64, ["num_chars"]) + _value_info(11, "pos", _INT64, ["num_polyphones"])
    graph += _value_info(12, "logits", _FLOAT, ["num_polyphones", n_cls])
    opset = _bytes(1, "") + _int(2, 17)
    return _int(1, 8) + _bytes(2, "sambert-deploy") + _bytes(7, graph) + _bytes(8, opset)
