"""Export: bundle contents, graph audit, the parity gate (and that it can fail), CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from sambert_deploy.cli import main
from sambert_deploy.errors import ExportError, ExportValidationError, InvalidInputError
from sambert_deploy.export import bundle as bundle_mod
from sambert_deploy.export.bundle import ExportOptions, export_model
from sambert_deploy.export.graphs import GRAPHS
from sambert_deploy.gates import GateError
from sambert_deploy.runtime.manifest import (
    MANIFEST,
    DurationFlipFailure,
    GateFailure,
    GateRecord,
    ShapeMismatch,
    ToleranceExceeded,
    read_manifest,
)

from .conftest import FULL, REPO, SEQS, TINY, make_modelscope_dir, need_path

BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("sambert_deploy.export") \\
                or name.startswith("sambert_deploy.models"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, _Block())
"""


def test_every_registered_graph_is_exported_and_described(tiny_bundles: dict[str, Path]) -> None:
    m = read_manifest(tiny_bundles["causal"])
    v = m.voice(None)
    assert set(v.graphs) == {g.name for g in GRAPHS}
    assert m.schema_version == 1 and m.sample_rate == 16000
    assert v.vocoder.hop == 200 and v.vocoder.causal and v.vocoder.context_right == 0 and v.vocoder.context_left > 0
    assert v.acoustic.postnet_left == 2 * 6 and v.acoustic.postnet_right == 2 * 2  # tiny: filter 9, shift 2
    assert v.speakers == ("F7", "M7") and "emotion_happy" in v.emotions
    assert len(v.provenance["am_sha256"]) == 64
    nc = read_manifest(tiny_bundles["noncausal"]).voice(None)
    assert not nc.vocoder.causal and nc.vocoder.context_right > 0
    for name in v.graphs:
        proto = onnx.load(str(m.graph_path(v, name)), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["graph"] == name and meta["model_type"] == "kantts-sambert-hifigan" and meta["hop"] == "200"
        assert json.loads(meta["vocoder_context"]) == [v.vocoder.context_left, v.vocoder.context_right]


def _fixture_script(bundle: Path, root: Path) -> str:
    return BLOCK_TORCH + textwrap.dedent(f"""
        import numpy as np
        from sambert_deploy.runtime.pipeline import OneShot
        from sambert_deploy.symbols import encode_symbols
        variant = {"'causal'" if read_manifest(bundle).voice(None).vocoder.causal else "'noncausal'"}
        worst = {{"mel": 0.0, "wav": 0.0}}
        with OneShot({str(bundle)!r}) as rt:
            for seq in {list(SEQS)!r}:
                z = np.load({str(root)!r} + f"/{{seq}}.npz")
                r = rt.run(str(z["symbol_sequence"]))
                assert np.array_equal(r.reps, z["durations_rounded"][0]), seq
                assert r.band == int(z["x_band_width"]), seq
                assert r.mel.shape == z["mel"].shape and r.audio.shape == z[f"wav_voc_{{variant}}"].shape, seq
                worst["mel"] = max(worst["mel"], float(np.abs(r.mel - z["mel"]).max()))
                worst["wav"] = max(worst["wav"], float(np.abs(r.audio - z[f"wav_voc_{{variant}}"]).max()))
        import sys
        assert "torch" not in sys.modules
        print(worst)
        assert worst["mel"] <= 1e-4 and worst["wav"] <= 1e-4, worst
    """)


def _run_isolated(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


@pytest.mark.parametrize("variant", ["causal", "noncausal"])
def test_tiny_fixtures_reproduced_without_torch(tiny_bundles: dict[str, Path], variant: str) -> None:
    print(_run_isolated(_fixture_script(tiny_bundles[variant], TINY)))


@pytest.mark.slow
def test_full_fixtures_export_via_cli_and_reproduce_without_torch(tmp_path: Path) -> None:
    need_path(FULL, "the full-size fixtures (../shared/kantts/fixtures/full, outside the repo)")
    for variant in ("causal", "noncausal"):
        d = make_modelscope_dir(tmp_path / f"m_{variant}", FULL, voc=f"voc_{variant}", voices=("full_emo",),
                                extra_ckpt=None)
        b = tmp_path / f"b_{variant}"
        res = CliRunner().invoke(main, ["-q", "export", str(d), "-o", str(b)])
        assert res.exit_code == 0, res.output
        assert "811u" in res.output
        print(res.output)
        print(_run_isolated(_fixture_script(b, FULL)))


def _break_vocoder_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Export scales the vocoder's largest weight by 1.05 after writing it: a graph the gate must catch."""
    original = bundle_mod.export_graph

    def broken(spec, model, path, meta, opset=None, seed=0):  # noqa: ANN001, ANN202
        res = original(spec, model, path, meta, opset, seed)
        if spec.name == "vocoder":
            proto = onnx.load(str(path))
            init = max(proto.graph.initializer, key=lambda i: len(i.raw_data))
            arr = onnx.numpy_helper.to_array(init) * np.float32(1.05)
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
            onnx.save(proto, str(path))
        return res

    monkeypatch.setattr(bundle_mod, "export_graph", broken)


def test_gate_catches_a_broken_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _break_vocoder_export(monkeypatch)
    d = make_modelscope_dir(tmp_path / "m", TINY, voices=("v",), extra_ckpt=None)
    with pytest.raises(GateError) as e:
        export_model(d, tmp_path / "b", options=ExportOptions(gate_units=(3,)))
    assert isinstance(e.value, ExportValidationError)  # what callers catch
    bad = [f for f in e.value.gate_failures if f.subject == "vocoder.audio"]
    assert bad and all(isinstance(f, ToleranceExceeded) and f.metric == "max_abs" and f.value > f.bound for f in bad)
    sizes = ((1, 1), (1, 2), (1, 57), (3, 57), (1, 240))
    assert {f.case for f in bad} == {f"batch={b}, num_frames={n}" for b, n in sizes}  # every size, collected
    assert "vocoder.audio (batch=3, num_frames=57): max-abs" in str(e.value)


def test_gate_collects_pipeline_failures(tiny_bundles: dict[str, Path]) -> None:
    """Compare a bundle against a different torch model: the pipeline gate lists every case."""
    import torch

    from sambert_deploy.models.loading import load_hifigan, load_sambert

    am, _ = load_sambert(TINY / "am/config.yaml", TINY / "am/ckpt/checkpoint_0.pth")
    gen = load_hifigan(TINY / "voc_causal/config.yaml", TINY / "voc_causal/ckpt/checkpoint_0.pth")
    with torch.no_grad():
        am.mel_postnet.fc.bias += 0.01
    m = read_manifest(tiny_bundles["causal"])
    _, failures = bundle_mod.pipeline_gate(m, m.default_voice, am, gen, (1, 5))
    assert len(failures) >= 2 and all(isinstance(f, ToleranceExceeded) for f in failures), failures
    assert {(f.case, f.subject.split()[-1]) for f in failures} >= {("1u", "mel"), ("5u", "mel")}


def test_gate_fails_a_length_mismatch(tiny_bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime waveform one hop longer than torch's is a shape failure of its own, with both lengths."""
    from sambert_deploy.models.loading import load_hifigan, load_sambert

    am, _ = load_sambert(TINY / "am/config.yaml", TINY / "am/ckpt/checkpoint_0.pth")
    gen = load_hifigan(TINY / "voc_causal/config.yaml", TINY / "voc_causal/ckpt/checkpoint_0.pth")
    original_ref = bundle_mod.torch_reference

    def shorter(*a, **k):  # noqa: ANN002, ANN003, ANN202
        ref = original_ref(*a, **k)
        ref["wav"] = ref["wav"][:-200]
        return ref

    monkeypatch.setattr(bundle_mod, "torch_reference", shorter)
    m = read_manifest(tiny_bundles["causal"])
    cases, failures = bundle_mod.pipeline_gate(m, m.default_voice, am, gen, (4,))
    (f,) = failures
    assert isinstance(f, ShapeMismatch) and f.case == "4u" and f.subject.endswith(" wav")
    assert f.got[0] == f.want[0] + 200 and cases[0].wav_err == float("inf")
    assert GateFailure.from_json(json.loads(json.dumps(f.to_json()))) == f


def test_export_all_voices(tiny_model_dir: Path, tmp_path: Path) -> None:
    rep = export_model(tiny_model_dir, tmp_path / "b", all_voices=True, options=ExportOptions(check=False))
    m = read_manifest(rep.bundle)
    assert list(m.voices) == ["zhibei_emo", "zhiyan_emo"] and m.default_voice == "zhibei_emo"
    # --no-check is recorded, so `info` can tell an unchecked bundle from a gated one.
    assert all(v.gate == GateRecord(False) and v.gate.status == "not_run" for v in m.voices.values())
    raw = json.loads((rep.bundle / MANIFEST).read_text("utf-8"))
    assert all(v["gate"] == {"checked": False, "status": "not_run"} for v in raw["voices"].values())
    r = CliRunner().invoke(main, ["info", str(rep.bundle)])
    assert "parity gate: not run: skipped at export (--no-check)" in r.output, r.output


def _cli(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def test_export_cli_bad_inputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    code, out = _cli(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "b")])
    assert code == 2 and "is not a directory" in out and "Traceback" not in out and len(out.strip().splitlines()) == 1
    code, out = _cli(["export", str(tiny_model_dir), "-o", str(tmp_path / "b"), "--voice", "zhida"])
    assert code == 2 and "unknown voice 'zhida'" in out and "zhibei_emo" in out
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    code, out = _cli(["export", str(tiny_model_dir), "-o", str(busy)])
    assert code == 2 and "--force" in out and len(out.strip().splitlines()) == 1
    f = tmp_path / "file"
    f.write_text("x")
    code, out = _cli(["export", str(tiny_model_dir), "-o", str(f / "sub")])
    assert code == 2 and ("writable" in out or "not a directory" in out), out
    code, out = _cli(["export", "-o", str(tmp_path / "b")])
    assert code == 2 and "MODEL_DIR" in out


def test_export_cli_unwritable(tiny_model_dir: Path) -> None:
    # /proc refuses new folders even for root, so this holds wherever the suite runs.
    code, out = _cli(["export", str(tiny_model_dir), "-o", "/proc/sambert-deploy-test/b"])
    assert code == 2 and "not writable" in out and len(out.strip().splitlines()) == 1, out


def test_export_force_overwrites_bundle(tiny_model_dir: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    code, _ = _cli(["export", str(tiny_model_dir), "-o", str(b), "--no-check"])
    assert code == 0
    code, out = _cli(["export", str(tiny_model_dir), "-o", str(b), "--no-check"])
    assert code == 2 and "--force" in out
    code, _ = _cli(["export", str(tiny_model_dir), "-o", str(b), "--no-check", "--force"])
    assert code == 0


def _module_step(am, prev, memory_i, x_k, x_v, x_bias, h_k, h_v, h_bias):  # noqa: ANN001, ANN202
    """The decoder step of one stream written with the model's own modules, its x window oldest first
    as the reference keeps it (what each row of the slim, batched step graph must equal)."""
    import torch

    from sambert_deploy.models.sambert import attend, merge_heads

    dec = am.mel_decoder.mel_dec
    x = dec.step_input(prev, memory_i)
    ks, vs = [], []
    for li, blk in enumerate(dec.pnca):
        att = blk.pnca_attn
        q, k, v = att.qkv(x)
        kk, vv = torch.cat([x_k[li:li + 1], k], dim=2), torch.cat([x_v[li:li + 1], v], dim=2)
        cx, _ = attend(q, kk, vv, att.d_head, bias=x_bias)
        ch, _ = attend(q, h_k[li:li + 1], h_v[li:li + 1], att.d_head, bias=h_bias)
        x = blk.pos_ffn(att.fc_x(merge_heads(cx)) + att.fc_h(merge_heads(ch)) + x)
        ks.append(kk[0, :, 1:])
        vs.append(vv[0, :, 1:])
    return dec.dec_out_proj(dec.ln(x)), torch.stack(ks), torch.stack(vs)


@pytest.mark.parametrize("which", ["tiny", "full"])
def test_slim_decoder_step_equals_module_step(which: str) -> None:
    """The decoder step graph is rewritten for fewer ONNX nodes and takes a batch of streams (windows
    newest first); each row must compute the module's step of that stream alone."""
    import torch

    from sambert_deploy.export.graphs import GRAPHS_BY_NAME
    from sambert_deploy.models.loading import load_sambert

    from .conftest import fixture_set

    src = fixture_set(which)
    am, _ = load_sambert(src / "am/config.yaml", src / "am/ckpt/checkpoint_0.pth")
    spec = GRAPHS_BY_NAME["decoder_step"]
    graph = spec.build(am).eval()
    rng = np.random.default_rng(3)
    for sizes in ({"batch": 1, "x_window": 1, "h_window": 1}, {"batch": 3, "x_window": 4, "h_window": 7}):
        feeds = spec.make_inputs(am, sizes, rng)
        args = [torch.from_numpy(feeds[t.name]) for t in spec.inputs]
        with torch.no_grad():
            frames, x_k, x_v = graph(*args)
            for b in range(sizes["batch"]):
                old_first = [torch.from_numpy(feeds[n][b, :, :, ::-1].copy()) for n in ("x_k", "x_v")]
                x_bias = torch.from_numpy(feeds["x_bias"][b, ::-1].copy())
                want = _module_step(am, args[0][b:b + 1], args[1][b:b + 1], *old_first, x_bias,
                                    args[5][b], args[6][b], args[7][b])
                got = (frames[b:b + 1], x_k[b].flip(2), x_v[b].flip(2))
                for g, w in zip(got, want, strict=True):
                    assert g.shape == w.shape
                    assert float((g - w).abs().max()) <= 1e-5 * max(1.0, float(w.abs().max()))


@pytest.mark.parametrize("module", ["torch", "onnx", "yaml"])
def test_require_export_extra_names_the_extra(module: str) -> None:
    """Without the export extra the CLI must say what to install, not die in an import of torch."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None  # what importlib itself uses to mark a module as not importable
        from sambert_deploy.errors import MissingExtraError
        from sambert_deploy.export import require_export_extra
        assert "torch" not in sys.modules or sys.modules["torch"] is None, "sambert_deploy.export imported torch"
        try:
            require_export_extra()
        except MissingExtraError as e:
            print(e)
        else:
            raise SystemExit("require_export_extra() passed without {module}")
    """)
    out = _run_isolated(code)
    assert f"'{module}'" in out and "pip install 'sambert-deploy[export]'" in out, out


def test_export_entry_points_name_a_missing_extra_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library call and the CLI both refuse before any work when the export extra is incomplete,
    naming the module and the install line; nothing is written."""
    from sambert_deploy.errors import MissingExtraError

    src = make_modelscope_dir(tmp_path / "m", TINY, voices=("tiny_emo",), extra_ckpt=None)
    monkeypatch.setitem(sys.modules, "onnx", None)  # how importlib marks a module as not importable
    with pytest.raises(MissingExtraError, match=r"'onnx' is not installed.*sambert-deploy\[export\]"):
        export_model(src, tmp_path / "lib")
    res = CliRunner().invoke(main, ["export", str(src), "-o", str(tmp_path / "cli")])
    assert res.exit_code != 0 and "'onnx' is not installed" in res.output, res.output
    assert "sambert-deploy[export]" in res.output, res.output
    assert not (tmp_path / "lib").exists() and not (tmp_path / "cli").exists()


def test_export_model_needs_a_source(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="model_dir"):
        export_model(None, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_graph_inputs_refuse_the_wrong_model() -> None:
    from sambert_deploy.export.graphs import GRAPHS_BY_NAME
    from sambert_deploy.models.loading import load_hifigan

    gen = load_hifigan(TINY / "voc_causal/config.yaml", TINY / "voc_causal/ckpt/checkpoint_0.pth")
    with pytest.raises(ExportError, match="KanTtsSAMBERT"):
        GRAPHS_BY_NAME["encoder"].make_inputs(gen, GRAPHS_BY_NAME["encoder"].trace_sizes, np.random.default_rng(0))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("how", ["graph_parity", "pipeline_gate", "interrupt"])
def test_failed_force_export_keeps_previous_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    d = make_modelscope_dir(tmp_path / "m", TINY, voices=("v",), extra_ckpt=None)
    b = tmp_path / "out" / "b"
    export_model(d, b, options=ExportOptions(check=False))
    before = (b / MANIFEST).read_bytes()
    # The re-export is deterministic, so only a file of the old bundle tells old from new.
    (b / "previous.txt").write_text("kept")
    if how == "graph_parity":
        _break_vocoder_export(monkeypatch)
        expected: type[BaseException] = ExportValidationError
    elif how == "pipeline_gate":
        original_ref = bundle_mod.torch_reference

        def off(*a, **k):  # noqa: ANN002, ANN003, ANN202
            ref = original_ref(*a, **k)
            ref["mel"] = ref["mel"] + np.float32(0.01)
            return ref

        monkeypatch.setattr(bundle_mod, "torch_reference", off)
        expected = ExportValidationError
    else:
        original_voice = bundle_mod.export_voice

        def interrupted(*a, **k):  # noqa: ANN002, ANN003, ANN202
            original_voice(*a, **k)  # graphs are in the staging folder by now
            raise KeyboardInterrupt

        monkeypatch.setattr(bundle_mod, "export_voice", interrupted)
        expected = KeyboardInterrupt
    with pytest.raises(expected):
        export_model(d, b, options=ExportOptions(force=True, check=how != "interrupt", gate_units=(3,)))
    assert (b / MANIFEST).read_bytes() == before and (b / "previous.txt").is_file()
    read_manifest(b)  # graphs still match their hashes
    assert _leftovers(b.parent) == []


def test_force_export_replaces_bundle_and_records_gate(tmp_path: Path) -> None:
    d = make_modelscope_dir(tmp_path / "m", TINY, voices=("v",), extra_ckpt=None)
    b = tmp_path / "b"
    export_model(d, b, options=ExportOptions(check=False))
    (b / "stale.txt").write_text("from the previous bundle")
    export_model(d, b, options=ExportOptions(force=True, gate_units=(1, 4)))
    assert not (b / "stale.txt").exists() and _leftovers(tmp_path) == []
    g = read_manifest(b).voice(None).gate
    assert g is not None and g.checked and g.passed and g.status == "passed" and g.failures == ()
    assert [(c.case, c.units) for c in g.cases] == [("1u", 1), ("4u", 4)]
    assert all(c.frames > 0 and c.mel_err <= g.tolerances["mel_atol"] and c.wav_err <= g.tolerances["wav_atol"]
               for c in g.cases)
    assert set(g.tolerances["graphs"]) == {s.name for s in GRAPHS}
    assert ".tmp-" not in (b / MANIFEST).read_text("utf-8")  # nothing points into the staging folder


def test_bundle_is_relocatable_and_old_manifests_load(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(tiny_bundles["causal"], moved)
    m = read_manifest(moved)  # verify=True: every graph found and hashed relative to the new folder
    v = m.voice(None)
    assert all(not Path(g.file).is_absolute() and not Path(v.folder).is_absolute() for g in v.graphs.values())
    assert v.gate is not None and v.gate.passed and [c.units for c in v.gate.cases] == [1, 37]
    raw = json.loads((moved / MANIFEST).read_text("utf-8"))
    for voice in raw["voices"].values():
        del voice["gate"]
    (moved / MANIFEST).write_text(json.dumps(raw), "utf-8")
    assert read_manifest(moved).voice(None).gate is None


def test_duration_flips_lists_every_unit() -> None:
    torch_d = np.array([1.2, 2.5004, 3.0, 0.9, 4.7], np.float32)
    onnx_d = np.array([1.2, 2.4996, 3.0, 1.6, 4.7], np.float32)
    torch_reps, onnx_reps = np.array([1, 3, 3, 1, 5]), np.array([1, 2, 3, 2, 6])
    flips = bundle_mod.duration_flips(torch_reps, torch_d, onnx_reps, onnx_d)
    assert [(f.unit, f.boundary) for f in flips] == [(1, True), (3, False), (4, False)]
    assert flips[1].torch_d == pytest.approx(0.9) and flips[1].onnx_d == pytest.approx(1.6)


def test_gate_reports_every_flipped_unit(tiny_bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from sambert_deploy.models.loading import load_hifigan, load_sambert

    am, _ = load_sambert(TINY / "am/config.yaml", TINY / "am/ckpt/checkpoint_0.pth")
    gen = load_hifigan(TINY / "voc_causal/config.yaml", TINY / "voc_causal/ckpt/checkpoint_0.pth")
    original_ref = bundle_mod.torch_reference

    def flipped(*a, **k):  # noqa: ANN002, ANN003, ANN202
        ref = original_ref(*a, **k)
        ref["reps"] = ref["reps"].copy()
        ref["reps"][[0, 3]] += 1  # d left alone: far from x.5, so neither is a boundary case
        return ref

    monkeypatch.setattr(bundle_mod, "torch_reference", flipped)
    m = read_manifest(tiny_bundles["causal"])
    cases, failures = bundle_mod.pipeline_gate(m, m.default_voice, am, gen, (5,))
    assert [f.unit for f in cases[0].flips] == [0, 3] and not any(f.boundary for f in cases[0].flips)
    assert all(isinstance(f, DurationFlipFailure) and f.case == "5u" for f in failures), failures
    assert [f.flip for f in failures] == list(cases[0].flips)  # type: ignore[attr-defined]
    assert "rounded duration flipped at unit 3" in failures[1].message()


def test_audit_and_run_failures_are_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph that does not match its declaration is a GraphProblem; one ONNX Runtime cannot run, a
    RunFailure: both collected with the rest, never a crash or a pass."""
    from dataclasses import replace

    from sambert_deploy.export import exporter
    from sambert_deploy.export.graphs import GRAPHS_BY_NAME
    from sambert_deploy.models.loading import load_hifigan
    from sambert_deploy.runtime.manifest import GraphProblem, RunFailure, TensorSpec

    gen = load_hifigan(TINY / "voc_causal/config.yaml", TINY / "voc_causal/ckpt/checkpoint_0.pth")
    spec = GRAPHS_BY_NAME["vocoder"]
    path = tmp_path / "vocoder.onnx"
    exporter.export_graph(spec, gen, path, {})
    assert exporter.audit_graph(spec, path) == [] and exporter.check_graph_parity(spec, gen, path) == []
    renamed = replace(spec, outputs=(TensorSpec("wave", "float32", (1, 1, "num_samples")),))
    problems = exporter.audit_graph(renamed, path)
    assert problems and all(isinstance(p, GraphProblem) for p in problems)
    assert "declared tensor 'wave' is not in the graph" in " ".join(p.message() for p in problems)

    class Refusing:  # what ONNX Runtime raises on, e.g., an input it cannot take
        def run(self, *args: object) -> None:
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Unexpected input data type\nmore")

    monkeypatch.setattr(exporter, "ort_session", lambda *a, **k: Refusing())
    failures = exporter.check_graph_parity(replace(spec, check_sizes=({"num_frames": 5}, {"num_frames": 9})), gen, path)
    assert [(type(f), f.case) for f in failures] == [(RunFailure, "num_frames=5"), (RunFailure, "num_frames=9")]
    assert failures[0].message() == ("vocoder (num_frames=5): failed to run: ONNX Runtime failed: [ONNXRuntimeError] "
                                     ": 2 : INVALID_ARGUMENT : Unexpected input data type")
    assert GateFailure.from_json(json.loads(json.dumps(failures[0].to_json()))) == failures[0]
