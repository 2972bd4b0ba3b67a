"""The runtime as a shared service: concurrent streams on one Synthesizer, cancellation, shutdown,
text streamed in, backend honesty, and the CLI's stream-facing defects."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sambert_deploy.cli import main
from sambert_deploy.errors import (
    BackendClosedError,
    BackendUnavailableError,
    BundleError,
    InvalidInputError,
    SynthesizerClosedError,
)
from sambert_deploy.runtime.backends import OrtBackend
from sambert_deploy.runtime.manifest import read_manifest
from sambert_deploy.runtime.synthesizer import SpeechOptions, StreamOptions, Synthesizer

from .conftest import TINY, make_modelscope_dir, need_module
from .test_runtime import run_start_cancel_plan, symbol_units, workers_alive

SMALL = StreamOptions(postnet_chunk=6, vocoder_chunk=8, first_chunk=3)


@pytest.fixture(scope="module")
def two_voices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with two voices; the second one's speaker list renamed (M7 -> X1), as voices differ."""
    from sambert_deploy.export.bundle import ExportOptions, export_model

    d = make_modelscope_dir(tmp_path_factory.mktemp("ms2") / "model", TINY, extra_ckpt=None)
    b = tmp_path_factory.mktemp("bundle2") / "bundle"
    export_model(d, b, all_voices=True, options=ExportOptions(gate_units=(1,)))
    man = json.loads((b / "manifest.json").read_text())
    v2 = man["voices"]["zhiyan_emo"]
    v2["inventories"]["speaker"] = ["X1" if s == "M7" else s for s in v2["inventories"]["speaker"]]
    v2["speakers"] = ["X1" if s == "M7" else s for s in v2["speakers"]]
    (b / "manifest.json").write_text(json.dumps(man))
    return b


REQUESTS = [
    dict(symbols=symbol_units(30, 1), voice="zhibei_emo"),
    dict(text="你好，欢迎使用。今天天气很好！", voice="zhiyan_emo", emotion="Happy", speed=1.3),
    dict(symbols=symbol_units(45, 2), voice="zhiyan_emo", emotion="sad", speaker="X1", speed=0.8),
    dict(text="我们一起去公园吧。", voice="zhibei_emo", speaker="m7"),
]


def _collect(stream: Iterator) -> tuple[np.ndarray, list[tuple[int, int, int, bool]]]:
    chunks = list(stream)
    audio = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    return audio, [(c.sentence, c.offset, c.sentence_offset, c.final) for c in chunks]


@pytest.mark.parametrize("n", [1, 2, 4])
def test_concurrent_streams_equal_sequential(two_voices: Path, n: int) -> None:
    """N streams started together from threads == the same requests one after another, bit for bit."""
    reqs = (REQUESTS * 2)[:n]
    with Synthesizer(two_voices, backend="cpu", options=SMALL) as syn:
        seq = [_collect(syn.stream(**r)) for r in reqs]
    with Synthesizer(two_voices, backend="cpu", threads=2, options=SMALL) as syn:
        out: list = [None] * n
        errors: list[BaseException] = []
        go = threading.Barrier(n)

        def run(i: int) -> None:
            try:
                go.wait()
                out[i] = _collect(syn.stream(**reqs[i]))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        # One CPU budget: the workers are the Synthesizer's two, whatever the number of streams.
        assert sorted(t.name for t in threading.enumerate() if t.name.startswith("sambert")) == \
            ["sambert-cpu-0", "sambert-cpu-1"]
    for (a, meta_a), (b, meta_b) in zip(seq, out, strict=True):
        assert a.shape == b.shape and a.size > 0
        assert np.array_equal(a, b)
        assert meta_a == meta_b
    assert workers_alive() == []


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(0, 12)), st.booleans()),
                     min_size=1, max_size=6))
def test_stress_start_and_cancel(two_voices: Path, plan: list[tuple[int, int | None, bool]]) -> None:
    """Streams started from threads and cancelled at random points (or dropped, or closed with the
    Synthesizer): the ones read to the end are exact, no exception is lost, no thread is left."""
    refs: dict[int, np.ndarray] = {}
    with Synthesizer(two_voices, backend="cpu", options=SMALL) as syn:
        for k in {p[0] for p in plan}:
            refs[k] = syn.synthesize(**REQUESTS[k])
    syn = Synthesizer(two_voices, backend="cpu", threads=2, options=SMALL)
    errors = run_start_cancel_plan(syn, REQUESTS, refs, plan)
    syn.close()
    assert not errors, errors
    assert workers_alive() == []


def test_cancel_mid_sentence_frees_the_workers_promptly(tiny_bundles: dict[str, Path]) -> None:
    opts = StreamOptions(postnet_chunk=3, vocoder_chunk=4, first_chunk=2, max_ahead=50)
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=opts) as syn:
        stream = syn.stream(symbols=symbol_units(300, 3), speed=0.5)
        next(stream)
        t0 = time.perf_counter()
        stream.cancel()
        assert time.perf_counter() - t0 < 0.05  # cancel() never waits for the running graph calls
        while syn.activity().busy != {"cpu": 0, "cuda": 0}:
            assert time.perf_counter() - t0 < 0.5, "the stream's work did not end within 0.5 s"
            time.sleep(0.002)
        assert syn.activity().streams == 0 and stream.outstanding == 0
        assert stream.info.state == "cancelled"


def test_abandoned_stream_stops_using_cpu(tiny_bundles: dict[str, Path]) -> None:
    """A stream that is still referenced but no longer read stops at its bounded look-ahead: its
    workers wait on a condition (no polling) and the process burns no CPU."""
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=StreamOptions(vocoder_chunk=8, postnet_chunk=8, max_ahead=3)) as syn:
        stream = syn.stream(symbols=symbol_units(400, 4))
        next(stream)
        deadline = time.perf_counter() + 10
        while syn.activity().busy["cpu"] or stream.outstanding < 3:  # it fills its look-ahead, then stops
            assert time.perf_counter() < deadline
            time.sleep(0.01)
        assert stream.outstanding <= 4  # max_ahead 3, plus what the last acoustic step completed at once
        cpu0 = time.process_time()
        time.sleep(0.5)
        assert time.process_time() - cpu0 < 0.05
        assert syn.activity().busy["cpu"] == 0 and stream.info.state == "running"
        info = weakref.ref(stream)
        del stream
        import gc

        gc.collect()  # the finalizer ends it (from a thread of its own): no other activity needed
        for _ in range(100):
            if syn.activity().streams == 0:
                break
            time.sleep(0.01)
        act = syn.activity()
        assert info() is None and (act.streams, act.busy) == (0, {"cpu": 0, "cuda": 0})


def test_async_iteration_and_close_inside_the_event_loop(tiny_bundles: dict[str, Path]) -> None:
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL) as syn:
        ref = syn.synthesize(symbols=symbol_units(40, 2))

        async def main_() -> tuple[np.ndarray, float]:
            got = [c.samples async for c in syn.stream(symbols=symbol_units(40, 2))]
            stream = syn.stream(symbols=symbol_units(200, 3))
            await stream.__anext__()
            t0 = time.perf_counter()
            stream.close()  # from the loop's own thread: must not block it
            blocked = time.perf_counter() - t0
            assert [c async for c in stream] == []
            return np.concatenate(got), blocked

        audio, blocked = asyncio.run(main_())
    assert np.array_equal(audio, ref)
    assert blocked < 0.05


def test_close_while_streams_run(tiny_bundles: dict[str, Path]) -> None:
    syn = Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL)
    stream = syn.stream(symbols=symbol_units(200, 1))
    next(stream)
    voc = syn.sessions()["vocoder"]
    syn.close()
    with pytest.raises(SynthesizerClosedError, match="closed while this stream"):
        list(stream)
    assert list(stream) == []
    with pytest.raises(SynthesizerClosedError, match="create a new one"):
        syn.stream(symbols=symbol_units(3))
    with pytest.raises(BackendClosedError, match="was closed"):
        voc.run({"mel": np.zeros((1, 20, 5), np.float32)})
    with pytest.raises(BackendClosedError):
        voc.open()
    assert workers_alive() == []


def test_text_streams_in(tiny_bundles: dict[str, Path]) -> None:
    """The front end runs as the stream needs sentences: the first audio arrives while the input is
    still open, and the result equals the whole text's."""
    sentences = ["今天天气很好。", "我们去公园散步吧！", "明天见。"]
    first_audio = threading.Event()

    def source() -> Iterator[str]:
        yield sentences[0] + "\n"
        assert first_audio.wait(10), "no audio before the rest of the input"
        for s in sentences[1:]:
            yield s + "\n"

    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL) as syn:
        whole = syn.synthesize("\n".join(sentences))
        stream = syn.stream(source())
        got = []
        for c in stream:
            got.append(c.samples)
            first_audio.set()
        assert stream.info.sentences == 3
    assert np.array_equal(np.concatenate(got), whole)


def test_long_text_first_audio_does_not_wait_for_the_front_end(tiny_bundles: dict[str, Path]) -> None:
    text = "今天天气很好，我们去公园散步吧。" * 3000  # 48,000 characters
    with Synthesizer(tiny_bundles["causal"], backend="cpu") as syn:
        syn.load()
        with syn.stream(text) as stream:
            next(stream)
            info = stream.info
    assert info.first_audio_s is not None and info.first_audio_s < 1.0
    assert info.sentences < 20  # the front end ran only as far as the audio needed


def test_voice_loads_once_for_concurrent_first_requests(tiny_bundles: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sambert_deploy.runtime import voices as mod

    opened: list[str] = []
    real = mod.AcousticModel.__init__

    def counting(self: mod.AcousticModel, *a: object, **kw: object) -> None:
        opened.append("am")
        time.sleep(0.2)  # a slow load: the other requests arrive meanwhile
        real(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(mod.AcousticModel, "__init__", counting)
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL) as syn:
        outs: list[int] = []
        threads = [threading.Thread(target=lambda: outs.append(syn.synthesize(symbols=symbol_units(8)).size))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert opened == ["am"] and len(outs) == 4 and len(set(outs)) == 1


def test_front_end_is_per_voice(two_voices: Path) -> None:
    """Defect: the front end was cached with the first voice's speakers."""
    with Synthesizer(two_voices, backend="cpu", options=SMALL) as syn:
        assert syn.synthesize("你好。", voice="zhibei_emo", speaker="M7").size
        assert syn.synthesize("你好。", voice="zhiyan_emo", speaker="x1").size
        with pytest.raises(InvalidInputError, match="unknown speaker 'M7'.*X1"):
            syn.stream("你好。", voice="zhiyan_emo", speaker="M7")


def test_same_name_rule_for_emotion_everywhere(tiny_bundles: dict[str, Path]) -> None:
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL) as syn:
        a = syn.synthesize("你好。", emotion="HAPPY")
        b = syn.synthesize("[emotion=Happy]你好。")
        c = syn.synthesize("你好。", options=SpeechOptions(emotion="emotion_happy"))
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_symbol_line_without_breaks_is_split(tiny_bundles: dict[str, Path]) -> None:
    """Defect: a symbol line longer than max_units with no prosodic break raised IndexError."""
    units = [u for u in symbol_units(120, 7).split() if not u.startswith("{#")]
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=StreamOptions(max_units=50)) as syn:
        stream = syn.stream(symbols=" ".join(units))
        assert sum(len(c.samples) for c in stream) > 0
        assert stream.info.sentences == -(-len(units) // 50) and stream.info.units == len(units)


def test_auto_falls_back_when_a_listed_provider_cannot_open(tiny_bundles: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from sambert_deploy.runtime import backends, placement

    def no_driver(self: backends.OrtCudaBackend) -> object:
        raise BackendUnavailableError(f"{self.path}: the CUDA execution provider could not start (no driver)")

    monkeypatch.setattr(placement, "available_backends", lambda: ["cuda", "cpu"])  # listed: onnxruntime-gpu
    monkeypatch.setattr(backends.OrtCudaBackend, "open", no_driver)
    with Synthesizer(tiny_bundles["causal"], backend="auto", options=SMALL) as syn:
        assert syn.synthesize(symbols=symbol_units(5)).size
        assert syn.backends() == {syn.default_voice: ("cpu", "cpu")}
    assert "not on cuda" in caplog.text and "falling back to cpu" in caplog.text and "no driver" in caplog.text
    with Synthesizer(tiny_bundles["causal"], backend="cuda", strict=True) as syn, \
            pytest.raises(BackendUnavailableError, match="no driver"):
        syn.load()


def test_session_open_errors_name_the_cause(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    onnx = need_module("onnx", "the export extra (pip install -e '.[export]')")
    m = read_manifest(tiny_bundles["causal"])
    src = m.graph_path(m.voice(None), "vocoder")
    model = onnx.load(str(src))
    model.opset_import[0].version = 99
    newer = tmp_path / "newer.onnx"
    onnx.save(model, str(newer))
    with pytest.raises(BundleError, match="needs a newer ONNX Runtime"):
        OrtBackend(newer).open()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(src.read_bytes()[:5000])
    with pytest.raises(BundleError, match="damaged: re-export"):
        OrtBackend(broken).open()


def _reader_threads() -> list[str]:
    for _ in range(100):
        alive = [t.name for t in threading.enumerate() if t.name == "sambert-input"]
        if not alive:
            return []
        time.sleep(0.02)
    return alive


def test_long_symbol_line_from_an_iterable(tiny_bundles: dict[str, Path]) -> None:
    """A line longer than the reader's look-ahead must still arrive whole (it once deadlocked:
    the reader held back while the stream waited for the rest of the line)."""
    line = symbol_units(400, 2)
    assert len(line) > 16_384
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL) as syn:
        ref = syn.synthesize(symbols=line)
        pieces = iter([line[:10_000], line[10_000:], "\n"])
        got = syn.synthesize(symbols=pieces)
    assert np.array_equal(got, ref)


def test_failed_stream_releases_its_reader(tiny_bundles: dict[str, Path]) -> None:
    bad = "{zz_c$tone1$s_begin$word_begin$emotion_neutral$F7}\n"
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL) as syn:
        stream = syn.stream(symbols=iter([bad] + [symbol_units(30, k) + "\n" for k in range(60)]))
        with pytest.raises(InvalidInputError, match="symbol line 1: unit 0 .*sy symbol 'zz_c'"):
            list(stream)
        assert _reader_threads() == []


def test_source_errors_reach_the_consumer(tiny_bundles: dict[str, Path]) -> None:
    class Source:
        def __init__(self) -> None:
            self.items = ["你好。\n"]

        def __iter__(self) -> Source:
            return self

        def __next__(self) -> str:
            if self.items:
                return self.items.pop()
            raise OSError("connection reset")

    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL) as syn:
        with pytest.raises(OSError, match="connection reset"):
            list(syn.stream(Source()))
        assert _reader_threads() == []


def test_a_file_object_given_as_input_stays_open(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("今天天气很好。\n明天见。\n", encoding="utf-8")
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL) as syn, open(f, encoding="utf-8") as fh:
        assert syn.synthesize(fh).size > 0
        assert not fh.closed


def test_bookkeeping_error_ends_the_stream(tiny_bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from sambert_deploy.runtime import state as mod

    real = mod.AudioChunk
    calls = {"n": 0}

    def flaky(*a: object) -> object:  # building the third chunk fails, under the scheduler's lock
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("no room for a chunk")
        return real(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(mod, "AudioChunk", flaky)
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL) as syn:
        with pytest.raises(MemoryError, match="no room"):
            list(syn.stream(symbols=symbol_units(60, 1)))
        monkeypatch.setattr(mod, "AudioChunk", real)
        assert syn.synthesize(symbols=symbol_units(5)).size > 0  # the workers still serve other streams


def test_close_keeps_a_stream_error_unread(tiny_bundles: dict[str, Path]) -> None:
    syn = Synthesizer(tiny_bundles["causal"], backend="cpu", options=StreamOptions(max_ahead=1000))
    bad = "{zz_c$tone1$s_begin$word_begin$emotion_neutral$F7}\n"
    stream = syn.stream(symbols=iter([symbol_units(5) + "\n", bad]))
    deadline = time.perf_counter() + 10
    while stream.error is None:
        assert time.perf_counter() < deadline
        time.sleep(0.01)
    syn.close()
    with pytest.raises(InvalidInputError, match="zz_c"):
        list(stream)


def test_dropped_synthesizer_stops_its_workers(tiny_bundles: dict[str, Path]) -> None:
    import gc

    syn = Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL)
    syn.synthesize(symbols=symbol_units(5))
    del syn
    gc.collect()
    assert workers_alive() == []


# -- CLI -----------------------------------------------------------------------------------------

def test_synth_reads_symbols_from_stdin(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    import soundfile as sf

    out = tmp_path / "o.wav"
    lines = f"0\t{symbol_units(20, 1)}\n1\t{symbol_units(9, 2)}\n"
    r = CliRunner().invoke(main, ["-q", "synth", str(tiny_bundles["causal"]), "--symbols-file", "-", "-o", str(out)],
                           input=lines)
    assert r.exit_code == 0, r.output
    with Synthesizer(tiny_bundles["causal"], backend="cpu") as syn:
        ref = syn.synthesize(symbols=lines)
    data, _ = sf.read(out, dtype="int16")
    assert data.size == ref.size


def test_synth_speaks_stdin_before_it_closes(tiny_bundles: dict[str, Path]) -> None:
    exe = shutil.which("sambert-deploy", path=str(Path(sys.executable).parent))
    assert exe
    p = subprocess.Popen([exe, "-q", "synth", str(tiny_bundles["causal"]), "-", "-o", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None
    try:
        p.stdin.write("今天天气很好。\n".encode())
        p.stdin.flush()
        got = p.stdout.read1(4096)  # audio of the first sentence, while stdin is still open
        assert got and p.poll() is None
        p.stdin.write("明天见。\n".encode())
        p.stdin.close()
        rest = p.stdout.read()
        assert p.wait(60) == 0, p.stderr.read() if p.stderr else ""
        assert len(got) + len(rest) > len(got)
    finally:
        p.kill()


def test_synth_text_beginning_with_dash(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o.wav"
    r = CliRunner().invoke(main, ["-q", "synth", str(tiny_bundles["causal"]), "-o", str(out), "--", "-5度"])
    assert r.exit_code == 0 and out.stat().st_size > 44, r.output


def test_failed_synthesis_keeps_the_existing_wav(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o.wav"
    out.write_bytes(b"precious")
    sym = tmp_path / "s.txt"
    sym.write_text(f"{symbol_units(10)}\n" + "{zz_c$tone1$s_begin$word_begin$emotion_neutral$F7}\n")
    r = CliRunner().invoke(main, ["synth", str(tiny_bundles["causal"]), "--symbols-file", str(sym), "-o", str(out)])
    assert r.exit_code == 2 and "symbol line 2" in r.output
    assert out.read_bytes() == b"precious" and sorted(p.name for p in tmp_path.iterdir()) == ["o.wav", "s.txt"]


def test_synth_into_a_closed_pipe_is_quiet(tiny_bundles: dict[str, Path]) -> None:
    """Defect: `synth -o - | head` printed a BrokenPipeError traceback."""
    exe = shutil.which("sambert-deploy", path=str(Path(sys.executable).parent))
    assert exe
    cmd = f"'{exe}' -q synth '{tiny_bundles['causal']}' '今天天气很好。我们去公园吧！' -o - | head -c 100 > /dev/null"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.returncode in (0, 141)


def test_package_reexports_the_api_lazily() -> None:
    code = ("import sys, sambert_deploy; assert 'numpy' not in sys.modules; "
            "from sambert_deploy import Synthesizer, SpeechOptions, Stream; print(Synthesizer.__module__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "sambert_deploy.runtime.synthesizer", r.stderr


def test_info_reports_what_opens(tiny_bundles: dict[str, Path]) -> None:
    r = CliRunner().invoke(main, ["info", str(tiny_bundles["causal"])])
    assert r.exit_code == 0 and "backend cpu: opens" in r.output, r.output
    assert "parity gate: passed on 1/37 units" in r.output and "vocoder (fp32)" in r.output


def test_export_cli_without_the_extra_names_it(tmp_path: Path) -> None:
    """Defect: `sambert-deploy export` without the export extra died with ModuleNotFoundError."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from sambert_deploy.cli import main\n"
            f"main(['export', {str(tmp_path)!r}, '-o', {str(tmp_path / 'b')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'sambert-deploy[export]'" in r.stderr
