"""Vocoder variants: the quantize step on a bundle, their manifest records, and how the runtime picks
one (the quality of the recipes themselves is gated on a real vocoder in tests/test_quality.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sambert_deploy.calibration.bundle import compare
from sambert_deploy.cli import main
from sambert_deploy.errors import InvalidInputError, MissingExtraError, PrecisionError
from sambert_deploy.runtime.manifest import QualityRecord, Variant, read_manifest
from sambert_deploy.runtime.pipeline import OneShot
from sambert_deploy.runtime.precision import choose_vocoder
from sambert_deploy.runtime.synthesizer import StreamOptions, Synthesizer

from .conftest import need_module
from .test_runtime import CHUNKS, _units

need_module("openvino", "the openvino extra, part of the test install (make test)")


@pytest.fixture(scope="module")
def quantized(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The causal tiny bundle with fp16, bf16 and int8 vocoders built and judged (no real-vocoder run:
    tests/test_quality.py covers that)."""
    from sambert_deploy.calibration.bundle import QuantizeOptions, quantize_bundle

    b = tmp_path_factory.mktemp("quantized") / "bundle"
    shutil.copytree(tiny_bundles["causal"], b)
    quantize_bundle(b, QuantizeOptions(reference=False))
    return b


def _force(bundle: Path, precision: str, passed: bool) -> None:
    """Rewrite one variant's verdict (the tiny vocoder's random weights decide nothing about speech)."""
    p = bundle / "manifest.json"
    d = json.loads(p.read_text("utf-8"))
    for v in d["voices"].values():
        q = v["variants"][precision]["quality"]
        q["passed"], q["failures"] = passed, ([] if passed else ["log-mel L1 0.900 > 0.15 nats"])
    p.write_text(json.dumps(d), "utf-8")


def test_quantize_records_every_variant(quantized: Path) -> None:
    m = read_manifest(quantized)  # verifies the new files' sha256 too
    v = m.voice(None)
    assert set(v.variants) == {"fp16", "bf16", "int8"}
    assert v.variants["bf16"].graph.file == v.graphs["vocoder"].file  # a hint, not a graph
    assert v.variants["bf16"].backends == ("openvino",)
    for p in ("fp16", "int8"):
        var = v.variants[p]
        assert var.graph.file == f"vocoder.{p}.onnx" and (quantized / v.folder / var.graph.file).is_file()
        assert var.graph.precision == p
        q = var.quality
        assert {"logmel_l1", "logmel_l1_quiet", "snr_db"} <= set(q.metrics)
        assert q.passed == (not q.failures)
    assert v.variants["int8"].recipe["quantized"] > 0
    # No temp leftovers in the voice folder, and the calibration mels are cached.
    names = [p.name for p in (quantized / v.folder).iterdir()]
    assert not [n for n in names if n.startswith(".")], names
    assert any(n.startswith("calibration-") for n in names)


def test_info_shows_each_variant(quantized: Path) -> None:
    r = CliRunner().invoke(main, ["info", str(quantized)])
    assert r.exit_code == 0, r.output
    for p in ("fp16", "bf16", "int8"):
        assert f"vocoder {p}:" in r.output
    assert "log-mel L1" in r.output and "gate" in r.output


@pytest.mark.parametrize("precision,backend", [("fp16", "cpu"), ("int8", "cpu"), ("int8", "openvino"),
                                               ("bf16", "openvino"), ("fp32", "openvino")])
def test_reduced_precision_stream_equals_its_own_one_shot(quantized: Path, tmp_path: Path, precision: str,
                                                          backend: str) -> None:
    b = tmp_path / "b"
    shutil.copytree(quantized, b)
    if precision != "fp32":
        _force(b, precision, True)
    sym = _units(40, 3)
    with OneShot(b, precision=precision, voc_backend=backend) as one:
        ref = one.run(sym)
    assert one.voc.choice.precision == precision and one.voc.choice.backend == backend
    with OneShot(b, precision="fp32", voc_backend="cpu") as one:
        fp32 = one.run(sym).audio
    m = read_manifest(b)
    for opts in CHUNKS[:3] + [StreamOptions()]:
        with Synthesizer(b, am_backend="cpu", voc_backend=backend, precision=precision, options=opts) as syn:
            audio = syn.synthesize(symbols=sym)
            assert syn.precisions() == {syn.default_voice: precision}
        assert audio.shape == ref.audio.shape
        if (precision, backend) != ("int8", "openvino"):
            assert float(np.abs(audio - ref.audio).max()) <= 1e-5, (precision, backend, opts)
            continue
        # OpenVINO's INT8 kernels depend on the window length (padded to bucket lengths): a tiny
        # difference before a Quantize node flips a rounding, so samples differ (8e-5 here; 0.27 at
        # full size, where bf16 and ORT's int8 do too). What must hold is that chunking adds no
        # error on top of the precision's own: the stream is as far from FP32 as its one-shot.
        whole = compare([fp32], [ref.audio], m.sample_rate, m.mel)["logmel_l1"]
        streamed = compare([fp32], [audio], m.sample_rate, m.mel)["logmel_l1"]
        assert abs(streamed - whole) <= 0.1 * whole + 1e-3, (whole, streamed, opts)


@pytest.mark.parametrize("variant", ["causal", "noncausal"])
def test_openvino_stream_equals_its_one_shot_with_bucketed_windows(tiny_bundles: dict[str, Path], variant: str) -> None:
    """OpenVINO windows of the causal vocoder are padded to a few bucket lengths (one compilation and
    one set of buffers per bucket, not per sentence end), which changes no sample; the non-causal
    vocoder's are not."""
    sym = "\n".join([_units(40, 5), _units(13, 6), _units(3, 7)])
    with OneShot(tiny_bundles[variant], precision="fp32", voc_backend="openvino") as one:
        refs = [one.run(line).audio for line in sym.splitlines()]
    ref = np.concatenate(refs)
    for opts in (StreamOptions(postnet_chunk=3, vocoder_chunk=7, first_chunk=2), StreamOptions()):
        with Synthesizer(tiny_bundles[variant], am_backend="cpu", voc_backend="openvino", precision="fp32",
                         options=opts) as syn:
            audio = syn.synthesize(symbols=sym)
        assert audio.shape == ref.shape
        assert float(np.abs(audio - ref).max()) <= 1e-5, opts


def test_auto_takes_the_fastest_passing_variant(quantized: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(quantized, b)
    both = ["openvino", "cpu"]

    def pick(backend: str, given: bool = False, available: list[str] = both) -> tuple[str, str]:
        c = choose_vocoder(read_manifest(b).voice(None), "auto", backend, given, available)
        return c.precision, c.backend

    for p in ("fp16", "bf16", "int8"):
        _force(b, p, False)
    assert pick("openvino") == ("fp32", "cpu")  # OpenVINO's FP32 is no faster, and compiles each length
    assert pick("openvino", given=True) == ("fp32", "openvino")  # a named backend is kept
    _force(b, "bf16", True)
    assert pick("openvino") == ("bf16", "openvino")
    assert pick("cpu", given=True) == ("fp32", "cpu")
    _force(b, "int8", True)
    assert pick("openvino") == ("int8", "cpu")  # as fast as OpenVINO's BF16 in half the memory
    assert pick("openvino", given=True) == ("bf16", "openvino")
    assert pick("cpu", available=["cpu"]) == ("int8", "cpu")
    assert pick("cuda", available=["cuda", "cpu"]) == ("fp32", "cuda")  # fp16 failed
    _force(b, "fp16", True)
    assert pick("cuda", available=["cuda", "cpu"]) == ("fp16", "cuda")
    with Synthesizer(b, precision="auto") as syn:
        syn.load(text=False)
        assert syn.precisions() == {syn.default_voice: "int8"}
        assert syn.backends()[syn.default_voice] == ("cpu", "cpu")
    _force(b, "int8", False)
    with Synthesizer(b, precision="auto") as syn:
        syn.load(text=False)
        assert syn.precisions() == {syn.default_voice: "bf16"}
        assert syn.backends()[syn.default_voice] == ("cpu", "openvino")  # the decoder step stays on ORT


def test_precision_mistakes_are_typed_errors_naming_the_fix(quantized: Path, tiny_bundles: dict[str, Path],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PrecisionError, match="unknown; choose one of auto, fp32"):
        Synthesizer(quantized, precision="int4")
    with Synthesizer(tiny_bundles["causal"], precision="int8") as syn:  # no variants built
        with pytest.raises(PrecisionError, match="sambert-deploy quantize BUNDLE --precision int8"):
            syn.load(text=False)
    b = tmp_path / "b"
    shutil.copytree(quantized, b)
    _force(b, "int8", False)
    with Synthesizer(b, precision="int8") as syn, pytest.raises(PrecisionError, match="failed its quality gate"):
        syn.load(text=False)
    _force(b, "bf16", True)
    with Synthesizer(b, voc_backend="cpu", precision="bf16") as syn, \
            pytest.raises(PrecisionError, match="runs on openvino, not on cpu"):
        syn.load(text=False)
    vm = read_manifest(b).voice(None)
    with pytest.raises(PrecisionError, match=r"pip install 'sambert-deploy\[openvino\]'"):
        choose_vocoder(vm, "bf16", "cpu", False, ["cpu"])  # openvino not installed
    r = CliRunner().invoke(main, ["synth", str(b), "-o", str(tmp_path / "x.wav"), "--precision", "int8", "--symbols-file",
                                  str(_symbols_file(tmp_path))])
    assert r.exit_code == 2 and "failed its quality gate" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["quantize", str(b), "--precision", "int4"])
    assert r.exit_code == 2 and "can build fp16, bf16, int8" in r.output
    r = CliRunner().invoke(main, ["quantize", str(b), "--int8-keep", "pre,bogus"])
    assert r.exit_code == 2 and "'bogus' is not a conv role" in r.output
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)
    from sambert_deploy.calibration.bundle import QuantizeOptions, quantize_bundle

    with pytest.raises(MissingExtraError, match=r"sambert-deploy\[openvino\]"):
        quantize_bundle(b, QuantizeOptions(precisions=("bf16",), reference=False))


def _symbols_file(tmp_path: Path) -> Path:
    p = tmp_path / "s.txt"
    p.write_text("0\t" + _units(5) + "\n", "utf-8")
    return p


def test_calibration_corpus_errors(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    from sambert_deploy.calibration.bundle import QuantizeOptions, quantize_bundle
    from sambert_deploy.calibration.mels import CalibrationMels

    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", "utf-8")
    with pytest.raises(InvalidInputError, match="has no sentences"):
        quantize_bundle(tiny_bundles["causal"], QuantizeOptions(corpus=empty, reference=False))
    m = read_manifest(tiny_bundles["causal"])
    with pytest.raises(InvalidInputError, match="corpus is empty"):
        CalibrationMels(m, m.voice(None), [])
    with pytest.raises(InvalidInputError, match="gave no speech"):
        CalibrationMels(m, m.voice(None), ["。。。", "   "], cache=False).mels()
    mels = CalibrationMels(m, m.voice(None), ["你好。", "今天天气很好。"], cache=False)
    assert len(list(mels)) == len(list(mels)) >= 2  # re-iterable


def test_quality_record_round_trips() -> None:
    q = QualityRecord(False, {"logmel_l1": 0.2, "snr_db": 3.0}, {"logmel_l1_max": 0.15}, ("x",), "d", {"a": 1})
    assert QualityRecord.from_json(json.loads(json.dumps(q.to_json()))) == q
    from sambert_deploy.runtime.manifest import GraphInfo, TensorSpec

    g = GraphInfo("vocoder", "v.onnx", "0" * 64, (TensorSpec("mel", "float32", (1, 80, "num_frames")),), (), "int8")
    var = Variant("int8", g, ("openvino", "cpu"), q, {"recipe": "keep pre"})
    assert Variant.from_json(json.loads(json.dumps(var.to_json()))) == replace(var)
