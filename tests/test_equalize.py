"""Cross-layer equalization (calibration/equalize.py) keeps the FP32 vocoder's output: on the tiny
causal vocoder exported through the real exporter, both ways of choosing the scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sambert_deploy.calibration.equalize import conv_pairs, equalize
from sambert_deploy.errors import InvalidInputError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _vocoder(bundle: Path) -> Path:
    return next(bundle.glob("voices/*/vocoder.onnx"))


def _mels(proto, frames: int, seed: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    inp = proto.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else frames for d in inp.type.tensor_type.shape.dim]
    return {inp.name: np.clip(rng.normal(-5.0, 2.5, dims), -11.5, 2.0).astype(np.float32)}


def _run(proto, feed: dict[str, np.ndarray]) -> np.ndarray:  # noqa: ANN001
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def _weights(proto) -> dict[str, np.ndarray]:  # noqa: ANN001
    return {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}


@pytest.mark.parametrize("mode", ["weights", "activations"])
def test_equalized_vocoder_keeps_fp32_output(tiny_bundles: dict[str, Path], mode: str) -> None:
    src = onnx.load(str(_vocoder(tiny_bundles["causal"])))
    feeds = [_mels(src, 24, s) for s in range(2)]
    out, rep = equalize(src, mode=mode, feeds=feeds)
    assert rep.pairs == tuple(conv_pairs(src)) and len(rep.pairs) >= 2
    assert rep.scale_min < 0.95 or rep.scale_max > 1.05  # the rewrite really moved range
    probe = _mels(src, 37, 7)  # a length the scales were not measured on
    ref = _run(src, probe)
    np.testing.assert_allclose(_run(out, probe), ref, atol=1e-5 * max(1.0, float(np.abs(ref).max())), rtol=0)


def test_scaling_one_side_only_changes_the_output(tiny_bundles: dict[str, Path]) -> None:
    """The check above can fail: the first conv scaled without the second's compensation (the bug
    it guards against) is far from FP32."""
    src = onnx.load(str(_vocoder(tiny_bundles["causal"])))
    out, rep = equalize(src, mode="weights")
    before, after = _weights(src), _weights(out)
    nodes = {n.name: n for n in src.graph.node}
    half = onnx.ModelProto()
    half.CopyFrom(out)
    seconds = {nodes[p.second].input[1] for p in rep.pairs}
    for init in half.graph.initializer:
        if init.name in seconds:
            assert not np.allclose(after[init.name], before[init.name])
            init.CopyFrom(onnx.numpy_helper.from_array(before[init.name], init.name))
    probe = _mels(src, 37, 7)
    assert float(np.abs(_run(half, probe) - _run(src, probe)).max()) > 1e-3


def test_activation_mode_needs_feeds(tiny_bundles: dict[str, Path]) -> None:
    with pytest.raises(InvalidInputError, match="needs feeds"):
        equalize(_vocoder(tiny_bundles["causal"]), mode="activations")
