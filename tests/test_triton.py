"""Triton: the repository writer, the request/response protocol, and the model served by a real
tritonserver (2.51 from the nvidia-pytriton wheel in .venv-triton, `make triton-env`) over gRPC streaming:
bit-exact against the in-process Synthesizer, streaming, 3 concurrent streams on one instance,
cancellation, errors that leave the instance serving, and the client CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sambert_deploy.cli import main
from sambert_deploy.errors import BundleError, InvalidInputError
from sambert_deploy.runtime.stream import AudioChunk
from sambert_deploy.runtime.synthesizer import SpeechOptions, Synthesizer
from sambert_deploy.serve.triton import protocol
from sambert_deploy.serve.triton.protocol import (
    CONFIG_MARKER,
    INPUTS,
    OUTPUTS,
    ModelParams,
    chunk_from_outputs,
    chunk_outputs,
    parse_request,
)
from sambert_deploy.serve.triton.repo import MODEL_FILE, RepoOptions, TritonRepoError, write_repo

from .conftest import REPO, missing, need_module
from .test_runtime import symbol_units

# Three sentences, the last one long: its synthesis takes most of the stream's time.
TEXT3 = ("今天天气很好。我们去公园散步吧！"
         "明天我们一起去图书馆看书，然后在湖边的咖啡馆里喝一杯热茶，聊聊最近读过的小说和电影，"
         "再沿着河边慢慢地走回家，路上买一些新鲜的水果和蔬菜，晚上做一顿丰盛的晚饭。")
LONG = "今天天气很好，我们去公园散步吧。" * 40


def _collect(chunks: Iterator[AudioChunk]) -> tuple[np.ndarray, list[tuple[int, int, int, bool]]]:
    got = list(chunks)
    audio = np.concatenate([c.samples for c in got]) if got else np.zeros(0, np.float32)
    return audio, [(c.sentence, c.offset, c.sentence_offset, c.final) for c in got]


# -- the repository and the protocol (no server) ---------------------------------------------------

def test_config_is_written_from_the_protocol(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    rep = write_repo(tiny_bundles["causal"], tmp_path / "repo", RepoOptions(instances=2, max_concurrent=3,
                                                                           backend="cpu", execution_env="/env"))
    text = (rep.model_dir / "config.pbtxt").read_text("utf-8")
    assert text.startswith(CONFIG_MARKER)
    assert "model_transaction_policy { decoupled: true }" in text and 'backend: "python"' in text
    assert "instance_group [ { count: 2 kind: KIND_CPU } ]" in text
    for t in INPUTS + OUTPUTS:
        line = next(ln for ln in text.splitlines() if f'name: "{t.name}"' in ln)
        assert f"data_type: {t.data_type}" in line and ("optional: true" in line) == t.optional
    params = dict(re.findall(r'parameters: \{ key: "([^"]+)" value: \{ string_value: "([^"]*)" \} \}', text))
    assert params["EXECUTION_ENV_PATH"] == "/env" and params["bundle"] == str(tiny_bundles["causal"].resolve())
    back = ModelParams.from_parameters({k: {"string_value": v} for k, v in params.items()})
    assert back == ModelParams(str(tiny_bundles["causal"].resolve()), backend="cpu", max_concurrent=3)
    assert (rep.model_dir / "1" / "model.py").read_bytes() == MODEL_FILE.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # the staging folder is gone


def test_repository_is_never_overwritten_silently(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    b = str(tiny_bundles["causal"])
    runner = CliRunner()
    out = tmp_path / "repo"
    r = runner.invoke(main, ["triton-repo", b, "-o", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["triton-repo", b, "-o", str(out), "--copy-bundle"])
    assert r.exit_code == 2 and "--force" in r.output and not (out / "sambert" / "1" / "bundle").exists()
    r = runner.invoke(main, ["triton-repo", b, "-o", str(out), "--copy-bundle", "--force"])
    assert r.exit_code == 0, r.output
    assert (out / "sambert" / "1" / "bundle" / "manifest.json").is_file()
    assert 'key: "bundle" value: { string_value: "bundle" }' in (out / "sambert" / "config.pbtxt").read_text()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = runner.invoke(main, ["triton-repo", b, "-o", str(mine), "--force"])
    assert r.exit_code == 2 and "even with --force" in r.output and (mine / "notes.txt").read_text() == "keep me"
    r = runner.invoke(main, ["triton-repo", str(tmp_path / "nobundle"), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and r.output.startswith("error: ") and not (tmp_path / "x").exists()
    with pytest.raises(BundleError):
        write_repo(tmp_path / "nobundle", tmp_path / "x")
    with pytest.raises(TritonRepoError, match="not both"):
        RepoOptions(bundle_path="/b", copy_bundle=True)


def _getter(**values: np.ndarray) -> object:
    return lambda name: values.get(name)


def _s(value: str | bytes) -> np.ndarray:
    return np.array([value.encode() if isinstance(value, str) else value], dtype=object)


@pytest.mark.parametrize(("inputs", "field", "fix"), [
    ({"TEXT": _s("  ")}, "TEXT", "empty"),
    ({"TEXT": _s("好" * 11)}, "TEXT", "split the text"),
    ({"TEXT": _s(b"\xff\xfe")}, "TEXT", "UTF-8"),
    ({"TEXT": _s("好"), "VOICE": _s(b"\xff")}, "VOICE", "UTF-8"),
    ({"TEXT": _s("好"), "SPEED": np.array([9.0], np.float32)}, "SPEED", "0.25"),
    ({"TEXT": _s("好"), "SPEED": np.array([np.nan], np.float32)}, "SPEED", "0.25"),
    ({"TEXT": _s("好"), "SPEED": np.array([1.0, 2.0], np.float32)}, "SPEED", "shape [1]"),
])
def test_bad_inputs_name_the_input_and_the_fix(inputs: dict, field: str, fix: str) -> None:
    with pytest.raises(InvalidInputError) as e:
        parse_request(_getter(**inputs), max_input_chars=10)  # type: ignore[arg-type]
    assert str(e.value).startswith(f"{field}: ") and fix in str(e.value) and "\n" not in str(e.value)


def test_request_and_chunk_round_trip() -> None:
    req = parse_request(_getter(TEXT=_s("你好"), VOICE=_s(""), EMOTION=_s("happy"), SPEED=np.array([1.5], np.float32),
                                SYMBOLS=np.array([True])), 100)  # type: ignore[arg-type]
    assert req.text == "你好" and req.symbols and req.options == SpeechOptions(emotion="happy", speed=1.5)
    chunk = AudioChunk(np.linspace(-1, 1, 7, dtype=np.float32), 16000, 2, 12345, 45, True)
    outputs = dict(chunk_outputs(chunk))
    assert list(outputs) == [t.name for t in OUTPUTS]
    back = chunk_from_outputs(outputs.__getitem__)
    assert back.samples.tobytes() == chunk.samples.tobytes() and back.samples.dtype == np.float32
    assert (back.sample_rate, back.sentence, back.offset, back.sentence_offset, back.final) == (16000, 2, 12345, 45, True)
    assert protocol.error_line(InvalidInputError("unknown voice 'x'", param="voice")) == "VOICE: unknown voice 'x'"
    assert protocol.error_line(KeyError("k")).startswith("internal error (KeyError)")


def test_model_file_imports_no_torch() -> None:
    """model.py loads in an interpreter where torch cannot be imported (Triton's utils faked)."""
    code = ("import sys, types; sys.modules['torch'] = None; "
            "sys.modules['triton_python_backend_utils'] = types.ModuleType('triton_python_backend_utils'); "
            "import runpy; ns = runpy.run_path(sys.argv[1]); assert 'TritonPythonModel' in ns; "
            "assert 'tritonclient' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code, str(MODEL_FILE)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_client_without_tritonclient_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient", None)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    r = CliRunner().invoke(main, ["triton-client", "127.0.0.1:1", "你好", "-o", str(tmp_path / "a.wav")])
    assert r.exit_code == 2 and "pip install 'sambert-deploy[triton]'" in r.output and len(r.output.splitlines()) == 1


# -- a real tritonserver ---------------------------------------------------------------------------

class Served:
    def __init__(self, server: object, bundle: Path, synth: Synthesizer):
        self.server, self.bundle, self.synth = server, bundle, synth

    @property
    def url(self) -> str:
        return self.server.url  # type: ignore[attr-defined,no-any-return]

    def in_flight(self) -> float:
        """The model's ``sambert_streams_in_flight`` gauge from Triton's metrics endpoint (loopback)."""
        import urllib.request

        port = self.server.metrics_port  # type: ignore[attr-defined]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        m = re.search(r"^sambert_streams_in_flight\{[^}]*\} (\S+)$", text, re.M)
        assert m is not None, "no sambert_streams_in_flight gauge on the metrics endpoint"
        return float(m.group(1))

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.perf_counter() + timeout
        while True:
            m = re.search(pattern, self.server.log_text())  # type: ignore[attr-defined]
            if m is not None:
                return m
            if time.perf_counter() > deadline:
                raise AssertionError(f"no log line /{pattern}/ within {timeout} s; log tail:\n"
                                     + self.server.log_tail())  # type: ignore[attr-defined]
            time.sleep(0.05)


@pytest.fixture(scope="module")
def served(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    need_module("tritonclient.grpc", "the triton extra (pip install -e '.[triton]')")
    from sambert_deploy.errors import BackendUnavailableError

    from .triton_local import PythonEnv, ServerOptions, TritonInstall, TritonServer

    venv = Path(os.environ.get("SAMBERT_TRITON_VENV", REPO / ".venv-triton"))
    try:
        install = TritonInstall.find(venv)
        env = PythonEnv.of(venv)
    except BackendUnavailableError as e:  # make test installs it (make triton-env); under CI its absence fails
        missing(f"{e} (the Triton tests need `make triton-env`)")
    bundle = tiny_bundles["causal"]
    work = tmp_path_factory.mktemp("triton")
    # The model runs in .venv-triton (numpy < 2: the 2.51 stub corrupts tensors under numpy 2), named the
    # official way, EXECUTION_ENV_PATH; the reference below runs here, in the project's .venv.
    # --copy-bundle: the model finds the bundle relative to its version folder.
    rep = write_repo(bundle, work / "repo", RepoOptions(backend="cpu", max_concurrent=4, copy_bundle=True,
                                                        execution_env=str(env.prefix)))
    # Metrics on a free loopback port: the model's in-flight gauge is read there.
    server = TritonServer(install, rep.repo, env, work, ServerOptions(metrics_port=0))
    server.start()
    try:
        with Synthesizer(bundle, backend="cpu") as synth:
            synth.load("*")
            yield Served(server, bundle, synth)
    finally:
        took = server.stop()
    assert took < 10, f"tritonserver took {took:.1f} s to stop on SIGTERM"
    assert server.proc is not None and server.proc.returncode is not None


def test_model_refuses_numpy2(served: Served, tmp_path: Path) -> None:
    """This test's own environment (numpy 2) as the model's Python: the model refuses to start with the
    fix in one line, rather than serve tensors the 2.51 stub corrupts (docs/triton.md)."""
    from sambert_deploy.errors import BackendUnavailableError

    from .triton_local import PythonEnv, ServerOptions, TritonServer

    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("this environment has numpy < 2")
    env = PythonEnv.of(sys.prefix)
    rep = write_repo(served.bundle, tmp_path / "repo", RepoOptions(backend="cpu", execution_env=str(env.prefix)))
    server = TritonServer(served.server.install, rep.repo, env, tmp_path, ServerOptions(ready_timeout_s=60))  # type: ignore[attr-defined]
    with pytest.raises(BackendUnavailableError, match="exited|not ready"):
        server.start()
    assert f"numpy {np.__version__} in the model's Python" in server.log_text()
    assert "install numpy<2 there" in server.log_text()


def _ref_timed(synth: Synthesizer, text: str) -> tuple[np.ndarray, list, list[float]]:
    t0 = time.perf_counter()
    chunks, times = [], []
    for c in synth.stream(text):
        chunks.append(c)
        times.append(time.perf_counter() - t0)
    audio, meta = _collect(iter(chunks))
    return audio, meta, times


def test_stream_is_bit_exact_and_streams(served: Served) -> None:
    from sambert_deploy.serve.triton.client import stream_speech

    _ref_timed(served.synth, TEXT3)  # warm
    tries = []
    for _ in range(3):
        ref, ref_meta, ref_t = _ref_timed(served.synth, TEXT3)
        with stream_speech(served.url, TEXT3) as s:
            audio, meta = _collect(s)
            arrivals = s.arrivals_s
        assert len({m[0] for m in ref_meta}) == 3
        assert audio.dtype == np.float32 and audio.size > 0 and np.array_equal(audio, ref)  # bit-exact
        assert meta == ref_meta
        # Streaming: the first chunk arrives before the last sentence is synthesized. In-process, the
        # last sentence's first chunk comes well after the first chunk; a model that sent everything at
        # the end would deliver them together. Timing on a shared 2-core machine: the best of 3 tries.
        last = next(i for i, m in enumerate(ref_meta) if m[0] == 2)
        ref_gap, gap = ref_t[last] - ref_t[0], arrivals[last] - arrivals[0]
        assert ref_gap > 0.02, f"the test text synthesizes too fast here ({ref_gap * 1e3:.0f} ms) to show streaming"
        tries.append(f"{gap * 1e3:.1f} ms (in-process {ref_gap * 1e3:.1f} ms)")
        if gap > 0.3 * ref_gap:
            break
    else:
        raise AssertionError(f"first chunk only {', '.join(tries)} before the last sentence's: not streamed")


def test_three_concurrent_streams_on_one_instance(served: Served) -> None:
    from sambert_deploy.serve.triton.client import ClientOptions, stream_speech

    requests = [(TEXT3, ClientOptions(), {}),
                (LONG[:200], ClientOptions(emotion="Happy", speed=1.3), {"emotion": "Happy", "speed": 1.3}),
                (symbol_units(60, 2), ClientOptions(symbols=True, speaker="m7", speed=0.8), {"speaker": "m7", "speed": 0.8})]
    refs = []
    for text, o, kw in requests:
        with (served.synth.stream(symbols=text, **kw) if o.symbols else served.synth.stream(text, **kw)) as st:
            refs.append(_collect(st))
    out: list = [None] * 3
    spans: list = [None] * 3
    errors: list[BaseException] = []
    go = threading.Barrier(3)

    def run(i: int) -> None:
        try:
            text, o, _ = requests[i]
            go.wait()
            with stream_speech(served.url, text, o) as s:
                out[i] = _collect(s)
                spans[i] = (s.t0 + s.arrivals_s[0], s.t0 + s.arrivals_s[-1], s.request_id)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for (a, meta_a), (b, meta_b) in zip(refs, out, strict=True):
        assert a.size > 0 and np.array_equal(a, b) and meta_a == meta_b
    # One after another, a stream's first chunk would come after the previous one's last.
    assert max(s[0] for s in spans) < min(s[1] for s in spans), spans
    served.wait_log(r"started; 3 in flight")
    for _, _, rid in spans:
        served.wait_log(rf"request {rid}: done after \d+ chunk")
    assert served.in_flight() == 0


def test_cancelled_stream_stops_its_synthesis(served: Served) -> None:
    from sambert_deploy.serve.triton.client import stream_speech

    total = len(served.synth.synthesize(LONG))
    s = stream_speech(served.url, LONG)
    got = [next(s), next(s)]
    assert not s.finished
    s.cancel()
    assert s.finished and list(s) == []
    m = served.wait_log(rf"request {s.request_id}: cancelled after (\d+) chunk\(s\), ([\d.]+) s audio in [\d.]+ s "
                        r"\(first audio [^)]*\), stream cancelled; (\d+) in flight")
    sent, audio_s, in_flight = int(m.group(1)), float(m.group(2)), int(m.group(3))
    assert sent >= len(got) and in_flight == 0 and served.in_flight() == 0
    assert audio_s * 16000 < total / 2, "the stream synthesized on after its client cancelled"
    ok, _ = _collect(stream_speech(served.url, TEXT3))
    assert np.array_equal(ok, served.synth.synthesize(TEXT3))


def test_errors_come_back_and_the_instance_keeps_serving(served: Served) -> None:
    from sambert_deploy.serve.triton.client import ClientOptions, synthesize

    for text, o, field in [(TEXT3, ClientOptions(voice="nobody"), "VOICE"),
                           (TEXT3, ClientOptions(emotion="grumpy"), "EMOTION"),
                           (TEXT3, ClientOptions(speed=9.0), "SPEED"),
                           ("   ", ClientOptions(), "TEXT"),
                           ("x y z", ClientOptions(symbols=True), "TEXT")]:
        with pytest.raises(InvalidInputError) as e:
            synthesize(served.url, text, o)
        msg = str(e.value)
        assert msg.startswith(f"{field}: ") and "\n" not in msg, msg
        if field == "VOICE":
            assert msg == "VOICE: unknown voice 'nobody'; valid voices: tiny_emo"
    r = synthesize(served.url, TEXT3)
    assert np.array_equal(r.samples, served.synth.synthesize(TEXT3)) and r.sentences == 3
    assert r.first_chunk_s is not None and r.first_chunk_s < r.elapsed_s


def test_triton_client_cli_writes_the_python_api_audio(served: Served, tmp_path: Path) -> None:
    import soundfile as sf

    out = tmp_path / "out.wav"
    r = CliRunner().invoke(main, ["triton-client", served.url, TEXT3, "-o", str(out)])
    assert r.exit_code == 0, r.output
    pcm, rate = sf.read(out, dtype="int16")
    ref = served.synth.synthesize(TEXT3)
    assert rate == 16000 and np.array_equal(pcm, np.clip(ref * 32768.0, -32768, 32767).astype(np.int16))
    r = CliRunner().invoke(main, ["triton-client", served.url, TEXT3, "-o", str(out), "--voice", "nobody"])
    assert r.exit_code == 2 and r.output.startswith("error: VOICE: unknown voice 'nobody'"), r.output
