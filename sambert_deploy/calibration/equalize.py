"""Cross-layer equalization of Conv -> LeakyRelu -> Conv pairs, as an ONNX graph rewrite (FP32 in, FP32 out).

LeakyReLU is positively homogeneous (``f(x / s) = f(x) / s`` for ``s > 0``), so dividing the first
conv's output channel ``c`` (weight rows and bias) by ``s_c`` and multiplying the second conv's input
channel ``c`` by ``s_c`` leaves the pair's output unchanged in exact arithmetic, while moving range
between the two: the point is to make a later per-tensor activation / per-channel weight INT8 grid
fit both better. Two ways to pick ``s`` (both clipped to ``[1/MAX_SCALE, MAX_SCALE]``):

* ``"weights"`` (Nagel et al. 2019, data-free): ``s_c = sqrt(r1_c / r2_c)``, ``r1`` the first conv's
  output-channel weight range and ``r2`` the second's input-channel range, so both become
  ``sqrt(r1_c * r2_c)``;
* ``"activations"`` (SmoothQuant-style, needs feeds): ``s_c = a_c^alpha / r2_c^(1 - alpha)``, ``a_c``
  the max |activation| of channel ``c`` between the two convs on the feeds, so channels with large
  activations are shrunk and their weights grow.

Only pairs where the first conv's output feeds nothing but the LeakyRelu and the LeakyRelu feeds
nothing but the second conv (group 1) are touched: HiFiGAN's resblock ``convs1.k -> convs2.k``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError

MAX_SCALE = 64.0
MODES = ("weights", "activations")


@dataclass(frozen=True)
class ConvPair:
    first: str
    second: str
    between: str  # the first conv's output tensor (what "activations" mode measures)


@dataclass(frozen=True)
class EqualizeReport:
    mode: str
    pairs: tuple[ConvPair, ...]
    scale_min: float
    scale_max: float


def _group(node) -> int:  # noqa: ANN001 - onnx.NodeProto
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def conv_pairs(proto) -> list[ConvPair]:  # noqa: ANN001 - onnx.ModelProto
    """Every Conv -> LeakyRelu -> Conv chain with single consumers, constant weights and group 1."""
    g = proto.graph
    inits = {i.name for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}

    def only_consumer(tensor: str):  # noqa: ANN202
        c = consumers.get(tensor, [])
        return c[0] if len(c) == 1 and tensor not in graph_outputs else None

    pairs = []
    for a in g.node:
        if a.op_type != "Conv" or _group(a) != 1 or a.input[1] not in inits:
            continue
        act = only_consumer(a.output[0])
        if act is None or act.op_type != "LeakyRelu":
            continue
        b = only_consumer(act.output[0])
        if b is None or b.op_type != "Conv" or _group(b) != 1 or b.input[0] != act.output[0] or b.input[1] not in inits:
            continue
        pairs.append(ConvPair(a.name, b.name, a.output[0]))
    return pairs


def _channel_max(proto, tensors: list[str], feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Per-channel (axis 1) max |value| of ``tensors`` over ``feeds`` (FP32, ORT CPU, no fusions)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    known = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    peak: dict[str, np.ndarray] = {}
    n = 0
    for feed in feeds:
        n += 1
        for t, v in zip(tensors, sess.run(tensors, dict(feed)), strict=True):
            m = np.abs(v).max(axis=tuple(i for i in range(v.ndim) if i != 1))
            peak[t] = np.maximum(peak[t], m) if t in peak else m
    if not n:
        raise InvalidInputError("activation equalization needs at least one feed (e.g. {'mel': f32 [1,80,F]})",
                                param="feeds")
    return peak


def equalize(model: Path | object, dst: Path | None = None, mode: str = "weights",
             feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
             alpha: float = 0.5) -> tuple[Any, EqualizeReport]:
    """Equalized copy of ``model`` (path or ModelProto) and an :class:`EqualizeReport`; saved to
    ``dst`` when given. FP32 output is unchanged up to float rounding."""
    import onnx
    from onnx import numpy_helper

    if mode not in MODES:
        raise InvalidInputError(f"equalize mode '{mode}' is unknown; choose one of {', '.join(MODES)}", param="mode")
    if mode == "activations" and feeds is None:
        raise InvalidInputError("mode 'activations' needs feeds (calibration mels)", param="feeds")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha {alpha} is outside [0, 1]", param="alpha")
    src = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    proto = onnx.ModelProto()
    proto.CopyFrom(src)
    inits = {i.name: i for i in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    pairs = conv_pairs(proto)
    act = _channel_max(proto, [p.between for p in pairs], feeds or ()) if mode == "activations" and pairs else {}
    used: dict[str, int] = {}
    for n in proto.graph.node:
        for x in n.input:
            used[x] = used.get(x, 0) + 1
    lo, hi = np.inf, 0.0
    tiny = 1e-8
    for p in pairs:
        a, b = nodes[p.first], nodes[p.second]
        if any(used[x] > 1 for x in (*a.input[1:], b.input[1]) if x):
            continue  # a weight or bias shared with another node would change that node too
        w1 = numpy_helper.to_array(inits[a.input[1]]).astype(np.float32)
        w2 = numpy_helper.to_array(inits[b.input[1]]).astype(np.float32)
        if w1.shape[0] != w2.shape[1]:
            continue
        r2 = np.abs(w2).max(axis=tuple(i for i in range(w2.ndim) if i != 1))
        if mode == "weights":
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            s = np.sqrt(np.maximum(r1, tiny) / np.maximum(r2, tiny))
        else:
            s = np.maximum(act[p.between], tiny) ** alpha / np.maximum(r2, tiny) ** (1.0 - alpha)
        s = np.clip(s, 1.0 / MAX_SCALE, MAX_SCALE).astype(np.float32)
        lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
        shape1 = (-1,) + (1,) * (w1.ndim - 1)
        shape2 = (1, -1) + (1,) * (w2.ndim - 2)
        inits[a.input[1]].CopyFrom(numpy_helper.from_array(w1 / s.reshape(shape1), a.input[1]))
        inits[b.input[1]].CopyFrom(numpy_helper.from_array(w2 * s.reshape(shape2), b.input[1]))
        if len(a.input) > 2 and a.input[2]:
            bias = numpy_helper.to_array(inits[a.input[2]]).astype(np.float32)
            inits[a.input[2]].CopyFrom(numpy_helper.from_array(bias / s, a.input[2]))
    report = EqualizeReport(mode, tuple(pairs), float(lo) if pairs else 1.0, float(hi) if pairs else 1.0)
    if dst is not None:
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        onnx.save(proto, str(tmp))
        tmp.replace(dst)
    return proto, report
