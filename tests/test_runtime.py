"""Streaming runtime: stream == one-shot, bounded windows, input errors, torch-free runtime."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from sambert_deploy.cli import main
from sambert_deploy.errors import BackendUnavailableError, BundleError, InvalidInputError
from sambert_deploy.frontend import split_units
from sambert_deploy.runtime.backends import select_backend
from sambert_deploy.runtime.chunking import context_windows
from sambert_deploy.runtime.manifest import read_manifest
from sambert_deploy.runtime.pipeline import OneShot
from sambert_deploy.runtime.synthesizer import StreamOptions, Synthesizer
from sambert_deploy.symbols import parse_units

from .conftest import REPO, TINY

PKG = REPO / "sambert_deploy"


def symbol_units(n: int, seed: int = 0) -> str:
    z = np.load(TINY / "io_seq1_medium.npz")
    base = str(z["symbol_sequence"]).split()
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, len(base)))
    return " ".join((base[start:] + base * (n // len(base) + 1))[:n])


# -- windows -------------------------------------------------------------------------------------

def _moving_sum(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """A network with an exact receptive field: y[t] = sum x[t-left .. t+right] (zero outside)."""
    pad = np.concatenate([np.zeros((left, x.shape[1])), x, np.zeros((right, x.shape[1]))])
    c = np.cumsum(np.concatenate([np.zeros((1, x.shape[1])), pad]), axis=0)
    return c[left + right + 1:] - c[:-(left + right + 1)]


@settings(max_examples=150, deadline=None)
@given(total=st.integers(1, 120), chunk=st.integers(1, 50), first=st.one_of(st.none(), st.integers(1, 30)),
       left=st.integers(0, 20), right=st.integers(0, 20), block=st.integers(1, 9))
def test_context_windows_reproduce_whole_sequence(total: int, chunk: int, first: int | None, left: int, right: int,
                                                  block: int) -> None:
    x = np.random.default_rng(total).standard_normal((total, 2))
    stream = (x[i:i + block] for i in range(0, total, block))
    whole = _moving_sum(x, left, right)
    parts, lasts = [], []
    for win, a, b, last in context_windows(stream, total, chunk, left, right, first):
        assert win.shape[0] <= left + max(chunk, first or 0) + right  # bounded
        parts.append(_moving_sum(win, left, right)[a:b])
        lasts.append(last)
    got = np.concatenate(parts)
    assert got.shape == whole.shape
    np.testing.assert_allclose(got, whole, atol=1e-9)
    assert lasts[-1] and not any(lasts[:-1])


# -- stream == one-shot ----------------------------------------------------------------------------

# Vocoder windows run one at a time (max_ahead 1) and several at once: the same samples either way.
CHUNKS = [StreamOptions(postnet_chunk=1, vocoder_chunk=1, first_chunk=1, max_ahead=3),
          StreamOptions(postnet_chunk=3, vocoder_chunk=4, first_chunk=2, max_ahead=1),
          StreamOptions(postnet_chunk=3, vocoder_chunk=4, first_chunk=2, max_ahead=2),
          StreamOptions(postnet_chunk=7, vocoder_chunk=13, first_chunk=5),
          StreamOptions(),
          StreamOptions(postnet_chunk=10_000, vocoder_chunk=10_000, first_chunk=10_000)]


@pytest.mark.parametrize("variant", ["causal", "noncausal"])
@pytest.mark.parametrize("n_units", [1, 2, 9, 40])
def test_stream_equals_one_shot(tiny_bundles: dict[str, Path], variant: str, n_units: int) -> None:
    sym = symbol_units(n_units, n_units)
    with OneShot(tiny_bundles[variant]) as rt:
        ref = rt.run(sym)
    frames = ref.mel.shape[0]
    # Chunk sizes on the frame count's boundaries too: exactly one chunk, and divisors of it.
    extra = [StreamOptions(postnet_chunk=max(1, frames), vocoder_chunk=max(1, frames), first_chunk=max(1, frames))]
    if frames >= 4 and frames % 2 == 0:
        extra.append(StreamOptions(postnet_chunk=frames // 2, vocoder_chunk=frames // 2, first_chunk=frames // 2))
    for opts in CHUNKS + extra:
        with Synthesizer(tiny_bundles[variant], backend="cpu", options=opts) as syn:
            chunks = list(syn.stream(symbols=sym))
        audio = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
        assert audio.shape == ref.audio.shape, (opts, audio.shape, ref.audio.shape)
        if audio.size:
            assert float(np.abs(audio - ref.audio).max()) <= 1e-5, opts
            assert [c.offset for c in chunks] == list(np.cumsum([0] + [len(c.samples) for c in chunks[:-1]]))
            assert chunks[-1].final and sum(c.final for c in chunks) == 1


def run_start_cancel_plan(syn: Synthesizer, reqs: list[dict], refs: dict[int, np.ndarray],
                          plan: list[tuple[int, int | None, bool]], atol: float = 0.0) -> list[BaseException]:
    """Start each ``(request, stop after chunk, drop)`` of ``plan`` from its own thread: cancel it at
    that chunk (or drop it unclosed), or read it to the end and compare with ``refs`` (bit for bit at
    ``atol`` 0). Returns every error met; a Synthesizer closed under a stream is not one."""
    import threading

    from sambert_deploy.errors import SynthesizerClosedError

    errors: list[BaseException] = []

    def run(k: int, stop_after: int | None, drop: bool) -> None:
        try:
            stream = syn.stream(**reqs[k])
            got = []
            for i, c in enumerate(stream):
                if stop_after is not None and i >= stop_after:
                    if not drop:
                        stream.cancel()
                    return
                got.append(c.samples)
            audio = np.concatenate(got)
            assert audio.shape == refs[k].shape and float(np.abs(audio - refs[k]).max()) <= atol
        except SynthesizerClosedError:
            pass
        except BaseException as e:  # noqa: BLE001 - reported to the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=p) for p in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def workers_alive() -> list[str]:
    import threading
    import time

    for _ in range(100):  # threads wind down asynchronously; give them up to 5 s
        alive = [t.name for t in threading.enumerate() if t.name.startswith("sambert")]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def test_stream_stops_cleanly(tiny_bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer that stops early, and an error in a window, end the stream's work; the error reaches
    the caller; after close() no thread is left."""
    from sambert_deploy.runtime.vocoder import Vocoder

    sym = symbol_units(40, 5)
    opts = StreamOptions(vocoder_chunk=2, first_chunk=1, max_ahead=3)
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=opts) as syn:
        stream = syn.stream(symbols=sym)
        first = next(stream)
        assert first.samples.size and not first.final
        stream.close()
        assert stream.info.state == "cancelled" and list(stream) == []

        calls = {"n": 0}
        real = Vocoder.window

        def failing(self: Vocoder, *a: object, **kw: object) -> np.ndarray:
            calls["n"] += 1
            if calls["n"] == 4:
                raise RuntimeError("window 4 failed")
            return real(self, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(Vocoder, "window", failing)
        stream = syn.stream(symbols=sym)
        with pytest.raises(RuntimeError, match="window 4 failed"):
            list(stream)
        assert stream.info.state == "failed" and list(stream) == []  # raised once, then ended
    assert workers_alive() == []


@pytest.mark.parametrize("opts", [
    StreamOptions(),
    StreamOptions(max_ahead=1),
    StreamOptions(postnet_chunk=2, vocoder_chunk=3, first_chunk=1, max_ahead=5)])
def test_sentences_split_and_concatenate(tiny_bundles: dict[str, Path], opts: StreamOptions) -> None:
    """Sentences share one acoustic stream (the model runs ahead into the next sentence while the
    vocoder finishes this one); each sentence's audio still equals its own one-shot audio."""
    lines = [symbol_units(12, 1), symbol_units(1, 5), symbol_units(20, 2), symbol_units(7, 3)]
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=opts) as syn, \
            OneShot(tiny_bundles["causal"]) as rt:
        stream = syn.stream(symbols="\n".join(f"{i}\t{line}" for i, line in enumerate(lines)))
        chunks = list(stream)
        refs = [rt.run(line).audio for line in lines]
        assert stream.info.sentences == 4 and stream.info.samples == sum(len(r) for r in refs)
    assert [c.sentence for c in chunks] == sorted(c.sentence for c in chunks)
    for i, ref in enumerate(refs):
        mine = [c for c in chunks if c.sentence == i]
        assert [c.sentence_offset for c in mine] == list(np.cumsum([0] + [len(c.samples) for c in mine[:-1]]))
        assert mine[-1].final and sum(c.final for c in mine) == 1
        got = np.concatenate([c.samples for c in mine])
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5)
    assert workers_alive() == []


def test_load_opens_sessions_and_front_end(tiny_bundles: dict[str, Path]) -> None:
    """``load`` does the one-time work up front, so a CLI's timings are synthesis only."""
    with Synthesizer(tiny_bundles["causal"], backend="cpu") as syn:
        assert syn.backends() == {} and syn.front_ends() == {}  # nothing opens before it is needed
        first = syn.load(text=False)
        assert syn.front_ends() == {syn.default_voice: ()}
        assert 0.0 < syn.load(text=False) < first  # already open: nothing to do the second time
        syn.load()
        assert syn.front_ends() == {syn.default_voice: ("",)}
        assert syn.backends() == {syn.default_voice: ("cpu", "cpu")}
        with pytest.raises(InvalidInputError, match="unknown voice 'nope'"):
            syn.load("nope")


def test_sentence_without_frames_is_skipped(tiny_bundles: dict[str, Path], caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sambert_deploy.runtime.acoustic import AcousticModel

    real = AcousticModel.plan

    def tiny_durations(self: AcousticModel, units: object, durations: object = None, duration_scale: float = 1.0,
                       token: object = None) -> object:
        return real(self, units, durations, 1e-4, token)  # type: ignore[arg-type]

    monkeypatch.setattr(AcousticModel, "plan", tiny_durations)
    with Synthesizer(tiny_bundles["causal"], backend="cpu") as syn:
        stream = syn.stream(symbols="\n".join([symbol_units(5, 1), symbol_units(6, 2)]))
        assert list(stream) == [] and stream.info.sentences == 2 and stream.info.frames == 0
    assert "produced no frames" in caplog.text


def test_split_units_at_breaks() -> None:
    line = parse_units(symbol_units(100, 3))
    pieces = split_units(line, 30)
    flat = sum(pieces, [])
    assert len(flat) == len(line) and all(len(p) <= 30 for p in pieces)
    # Each piece ends at a break, which becomes the sentence end (#4) as ttsfrd writes it.
    assert all(p[-1].break_level == 4 for p in pieces[:-1])
    assert [u for u in flat if not u.is_break] == [u for u in line if not u.is_break]
    assert split_units(line, 500) == [line]


def test_long_input_is_split_by_default(tiny_bundles: dict[str, Path]) -> None:
    sym = symbol_units(700, 4)
    with Synthesizer(tiny_bundles["causal"], backend="cpu") as syn:
        stream = syn.stream(symbols=sym)
        n = sum(len(c.samples) for c in stream)
        assert stream.info.sentences >= 3 and n > 0
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=StreamOptions(max_units=None)) as syn:
        stream = syn.stream(symbols=sym)
        list(stream)
        assert stream.info.sentences == 1


def test_text_input_uses_front_end(tiny_bundles: dict[str, Path]) -> None:
    with Synthesizer(tiny_bundles["causal"], backend="cpu") as syn:
        audio = syn.synthesize("你好，欢迎使用。", speaker="M7", emotion="happy")
    assert audio.dtype == np.float32 and audio.size > 0 and np.abs(audio).max() < 1


# -- bad input -------------------------------------------------------------------------------------

def test_input_errors(tiny_bundles: dict[str, Path]) -> None:
    with Synthesizer(tiny_bundles["causal"], backend="cpu") as syn:
        with pytest.raises(InvalidInputError, match="nothing to synthesize"):
            syn.stream(symbols="")
        with pytest.raises(InvalidInputError, match="nothing to synthesize"):
            syn.stream("")
        with pytest.raises(InvalidInputError, match=r"unknown voice 'x'.*tiny_emo"):
            syn.stream(symbols=symbol_units(3), voice="x")
        with pytest.raises(InvalidInputError, match=r"unknown emotion 'grumpy'.*happy.*sad"):
            syn.stream(symbols=symbol_units(3), emotion="grumpy")
        with pytest.raises(InvalidInputError, match=r"unknown speaker 'Q9'.*F7, M7"):
            syn.stream(symbols=symbol_units(3), speaker="Q9")
        bad = symbol_units(5).split()
        bad[3] = "{zz_c$tone1$s_begin$word_begin$emotion_neutral$F7}"
        with pytest.raises(InvalidInputError, match=r"unit 3 .*sy symbol 'zz_c'"):
            syn.stream(symbols=" ".join(bad))
        with pytest.raises(InvalidInputError, match=r"line 2: unit 0 .*6"):
            syn.stream(symbols=symbol_units(3) + "\n{a_c$tone1}")
        with pytest.raises(InvalidInputError, match=r"speed must be a number from 0.25 to 4.0"):
            syn.stream(symbols=symbol_units(3), speed=0)
        with pytest.raises(InvalidInputError, match="give exactly one of text or symbols"):
            syn.stream()
    with pytest.raises(InvalidInputError, match="vocoder_chunk must be an integer >= 1"):
        StreamOptions(vocoder_chunk=0)
    with pytest.raises(InvalidInputError, match="max_ahead must be an integer >= 1"):
        StreamOptions(max_ahead=0)


def test_bundle_errors(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundles["causal"], b)
    man = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**man, "schema_version": 99}))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        read_manifest(b)
    (b / "manifest.json").write_text(json.dumps({**man, "model_type": "vits"}))
    with pytest.raises(BundleError, match="model_type 'vits'"):
        read_manifest(b)
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupted"):
        read_manifest(b)
    (b / "manifest.json").write_text(json.dumps(man))
    g = b / "voices/tiny_emo/vocoder.onnx"
    g.write_bytes(g.read_bytes()[:1000])
    with pytest.raises(BundleError, match="does not match its sha256"):
        read_manifest(b)
    with pytest.raises(BundleError, match="not a bundle directory"):
        read_manifest(tmp_path / "none")


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from sambert_deploy.runtime.backends import select as backends  # where select_backend looks up the list

    assert select_backend("cpu") == "cpu"
    # auto on this machine: the acoustic model takes cuda where ORT has it, the vocoder the best present.
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert select_backend("auto") == ("cuda" if has_cuda else "cpu")
    assert select_backend("auto", stage="vocoder") == backends.available_backends()[0]
    with pytest.raises(InvalidInputError, match="backend 'tpu' is unknown"):
        select_backend("tpu")
    with monkeypatch.context() as m:  # auto follows what is present: a CUDA host, then a CPU-only one
        m.setattr(backends, "available_backends", lambda: ["cuda", "openvino", "cpu"])
        assert (select_backend("auto"), select_backend("auto", stage="vocoder")) == ("cuda", "cuda")
        m.setattr(backends, "available_backends", lambda: ["openvino", "cpu"])
        assert (select_backend("auto"), select_backend("auto", stage="vocoder")) == ("cpu", "openvino")

    if not has_cuda:
        assert select_backend("cuda") == "cpu"  # falls back, logged
        with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
            select_backend("cuda", strict=True)


def test_backend_checks_inputs(tiny_bundles: dict[str, Path]) -> None:
    from sambert_deploy.runtime.backends import OrtBackend

    m = read_manifest(tiny_bundles["causal"])
    with OrtBackend(m.graph_path(m.voice(None), "vocoder")) as be:
        with pytest.raises(InvalidInputError, match="input 'mel' has dtype float64"):
            be.run({"mel": np.zeros((1, 20, 5))})
        with pytest.raises(InvalidInputError, match="axis 1 is 3, expected 20"):
            be.run({"mel": np.zeros((1, 3, 5), np.float32)})
        with pytest.raises(InvalidInputError, match="missing"):
            be.run({})
        assert be.run({"mel": np.zeros((1, 20, 5), np.float32)})["audio"].shape == (1, 1, 1000)


def test_synth_cli(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    import soundfile as sf

    sym = tmp_path / "s.txt"
    sym.write_text(f"0\t{symbol_units(30)}\n1\t{symbol_units(10, 5)}\n")
    out = tmp_path / "o.wav"
    r = CliRunner().invoke(main, ["-q", "synth", str(tiny_bundles["causal"]), "--symbols-file", str(sym), "-o", str(out)])
    assert r.exit_code == 0, r.output
    data, sr = sf.read(out, dtype="int16")
    assert sr == 16000 and data.size > 0
    r = CliRunner().invoke(main, ["-q", "synth", str(tiny_bundles["causal"]), "--symbols-file", str(sym), "-o", "-"])
    assert r.exit_code == 0 and len(r.stdout_bytes) == 2 * data.size
    for args, words in (
        (["--emotion", "grumpy"], "unknown emotion"), (["--voice", "nope"], "unknown voice"),
        (["--backend", "cuda", "--strict"], "not available"),
    ):
        if "cuda" in args:
            import onnxruntime as ort

            if "CUDAExecutionProvider" in ort.get_available_providers():
                continue
        r = CliRunner().invoke(main, ["synth", str(tiny_bundles["causal"]), "--symbols-file", str(sym), "-o",
                                      str(out), *args])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
        assert len([ln for ln in r.output.splitlines() if ln.startswith("error")]) == 1
    r = CliRunner().invoke(main, ["synth", str(tmp_path), "你好", "-o", str(out)])
    assert r.exit_code == 2 and "manifest.json is missing" in r.output


# -- torch-free runtime ------------------------------------------------------------------------------

FORBIDDEN = ("torch", "sambert_deploy.export", "sambert_deploy.models", "sambert_deploy.calibration", "onnx")


@pytest.mark.parametrize("sub", ["runtime", "frontend"])
def test_runtime_and_frontend_import_nothing_from_torch_or_export(sub: str) -> None:
    for py in (PKG / sub).rglob("*.py"):
        tree = ast.parse(py.read_text(), str(py))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:  # relative: resolve against the package
                    base = ["sambert_deploy", sub, *py.relative_to(PKG / sub).parts[:-1]]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([mod] if mod else []))
                names = [mod]
            for n in names:
                assert not any(n == f or n.startswith(f + ".") for f in FORBIDDEN), f"{py}: imports {n}"
