"""The Gradio page at /ui (serve/ui.py): through the real gradio_client and headless Chromium over a
loopback uvicorn, against the Python API's own output; and the base install without gradio."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import REPO, missing, need_module, uvicorn_on_loopback

TEXT = "今天天气很好。我们去公园散步吧！" * 3


def _ui_modules() -> None:
    need_module("fastapi", "the serve extra (pip install -e '.[serve]')")
    need_module("httpx", "the dev extra (pip install -e '.[dev]')")
    need_module("gradio", "the ui extra (pip install -e '.[ui]')")
    need_module("gradio_client", "the ui extra (pip install -e '.[ui]'; gradio depends on it)")
    if shutil.which("ffmpeg") is None:
        missing("no ffmpeg here: Gradio encodes its streamed audio with it (apt-get install ffmpeg; .ci/run does)")


@pytest.fixture(scope="module")
def live(served_synth: Any) -> Iterator[tuple[str, Any]]:
    """A server as `serve --ui` builds it (the page mounted on the API app), and that app."""
    _ui_modules()
    from sambert_deploy.serve.app import ServeConfig, create_app

    app = create_app(served_synth, ServeConfig(max_concurrent=2, max_queue=2), ui=True)
    with uvicorn_on_loopback(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(live: tuple[str, Any]) -> Any:
    from gradio_client import Client

    # download_files=False: the outputs' URLs, so the test fetches exactly what a browser is served.
    return Client(live[0] + "/ui/", verbose=False, download_files=False)


def _python_api(synth: Any, text: str, **kw: Any) -> np.ndarray:
    with synth.stream(text, voice="tiny_emo", **kw) as s:
        return np.concatenate([c.int16() for c in s])


def _choices(component: dict[str, Any]) -> list[Any]:
    return [value for _label, value in component["props"]["choices"]]


def test_dropdowns_list_the_bundles_voices_and_emotions(client: Any, served_synth: Any) -> None:
    vm = served_synth.manifest.voices["tiny_emo"]
    emotions = [e.removeprefix("emotion_") for e in vm.emotions]
    drops = {c["props"]["label"]: c for c in client.config["components"] if c.get("type") == "dropdown"}
    assert _choices(drops["voice"]) == served_synth.voices() == ["tiny_emo"]
    assert _choices(drops["emotion"]) == ["", *emotions]
    assert _choices(drops["speaker"]) == list(vm.speakers) and drops["speaker"]["props"]["visible"] is True
    # Picking a voice refills emotion and speaker from that voice.
    emo, spk = client.predict("tiny_emo", api_name="/voice_choices")
    assert [v for _, v in emo["choices"]] == ["", *emotions] and emo["value"] == ""
    assert [v for _, v in spk["choices"]] == list(vm.speakers) and spk["visible"] is True


def test_emotion_choices_follow_the_voice() -> None:
    from sambert_deploy.errors import InvalidInputError
    from sambert_deploy.serve.ui import VoiceChoices, emotion_choices

    voices = {"a": VoiceChoices("a", ("neutral", "happy"), ("F7",)),
              "b": VoiceChoices("b", ("neutral", "sad", "angry"), ("F7", "M7"))}
    assert [v for _, v in emotion_choices(voices, "b")] == ["", "neutral", "sad", "angry"]
    assert [v for _, v in emotion_choices(voices, "a")] == ["", "neutral", "happy"]
    with pytest.raises(InvalidInputError, match="voice 'c' does not exist; this bundle has: a, b"):
        emotion_choices(voices, "c")


def _hls_samples(url: str) -> tuple[int, np.ndarray]:
    """The streamed player's audio as the browser gets it: the HLS playlist's AAC segments, decoded."""
    import av
    import httpx

    playlist = httpx.get(url).text
    assert "#EXT-X-ENDLIST" in playlist, playlist
    base = url.rsplit("/", 1)[0]
    data = b"".join(httpx.get(f"{base}/{line}").content for line in playlist.splitlines()
                    if line and not line.startswith("#"))
    with av.open(io.BytesIO(data), format="aac") as f:
        rate = f.streams.audio[0].codec_context.sample_rate
        pcm = np.concatenate([frame.to_ndarray().reshape(-1) for frame in f.decode(audio=0)])
    return rate, pcm.astype(np.float64)


def test_speak_streams_and_returns_the_python_api_audio(client: Any, served_synth: Any) -> None:
    import httpx
    import soundfile as sf

    ref = _python_api(served_synth, TEXT, emotion="happy", speed=1.25)
    job = client.submit(TEXT, "tiny_emo", "happy", "F7", 1.25, api_name="/speak")
    updates = list(job)
    streamed, whole, timing = job.result()
    # Streamed: the page got audio before the synthesis ended (one update per chunk, then the WAV).
    with_audio = [u for u in updates if u[0] is not None and u[1] is None]
    assert len(with_audio) >= 3, len(updates)
    # The whole utterance: the same int16 samples as the Python API.
    got, rate = sf.read(io.BytesIO(httpx.get(whole["url"]).content), dtype="int16")
    assert rate == served_synth.sample_rate
    np.testing.assert_array_equal(got, ref)
    # The streamed player: Gradio re-encodes every chunk to AAC (one ffmpeg per stream) for its HLS
    # player, so it is lossy. Documented bound: the decoded stream is the audio behind the encoder's
    # 1024 priming samples, padded to whole 1024-sample frames, and within 15 dB SNR of it (measured
    # 27 dB on the tiny voice's noise-like audio; a chunk scaled by its own peak falls below 0 dB).
    rate, dec = _hls_samples(streamed["url"])
    assert rate == served_synth.sample_rate
    assert len(ref) + 1024 <= len(dec) <= len(ref) + 1024 + 2048, (len(dec), len(ref))
    x = ref / 32768.0
    err = dec[1024:1024 + len(x)] - x
    snr = 10 * np.log10(np.sum(x ** 2) / np.sum(err ** 2))
    assert snr > 15, snr
    m = re.fullmatch(r"first audio (\d+) ms \(queued (\d+) ms\) · audio (\d+\.\d\d) s · RTF (\d+\.\d+) · "
                     r"finished at (\d+) ms", timing)
    assert m, timing
    assert float(m[3]) == pytest.approx(len(ref) / served_synth.sample_rate, abs=0.006)
    assert int(m[1]) <= int(m[5])


@pytest.mark.parametrize(("args", "message"), [
    (("", "tiny_emo", "", "F7", 1.0), "text: nothing to synthesize"),
    (("你好。", "tiny_emo", "furious", "F7", 1.0), "emotion"),
    (("你好。", "tiny_emo", "", "Z9", 1.0), "speaker"),
    (("你好。", "tiny_emo", "", "F7", 9.0), "greater than maximum value 4.0"),  # Gradio's slider check
])
def test_bad_input_shows_an_error_and_the_server_lives(client: Any, live: tuple[str, Any], args: tuple,
                                                       message: str) -> None:
    import httpx
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        client.predict(*args, api_name="/speak")
    assert message in str(e.value), str(e.value)
    assert live[1].admission.idle  # the refused request holds no slot
    assert httpx.get(live[0] + "/health").status_code == 200
    *_, timing = client.predict("你好。", "tiny_emo", "", "F7", 1.0, api_name="/speak")
    assert "RTF" in timing


def test_a_cancelled_run_frees_its_slot(client: Any, live: tuple[str, Any], served_synth: Any) -> None:
    """Stop (or a closed tab) ends the run: its synthesizer stream is closed and its admission slot
    given back, not held until the text is spoken out."""
    import time

    admission = live[1].admission
    job = client.submit(TEXT * 60, "tiny_emo", "", "F7", 1.0, api_name="/speak")
    deadline = time.monotonic() + 60  # a bound on waiting, not a speed claim
    while (job.status().code.name != "ITERATING" or admission.running == 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert admission.running == 1 and not job.done()
    job.cancel()
    deadline = time.monotonic() + 30  # a bound on waiting, not a speed claim
    while not admission.idle and time.monotonic() < deadline:
        time.sleep(0.02)
    assert admission.idle
    assert served_synth.activity().streams == 0  # the app serves this synthesizer (the live fixture)


def test_text_over_the_servers_limit_is_refused(served_synth: Any) -> None:
    _ui_modules()
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from sambert_deploy.serve.app import ServeConfig, create_app

    app = create_app(served_synth, ServeConfig(max_input_chars=10), ui=True)
    with uvicorn_on_loopback(app) as url:
        with pytest.raises(AppError, match="11 characters is over the limit of 10"):
            Client(url + "/ui/", verbose=False).predict("今天天气很好。真很好。", "tiny_emo", "", "F7", 1.0,
                                                       api_name="/speak")


def test_the_page_shares_the_servers_admission(served_synth: Any) -> None:
    """A speech request holding the only slot (no queue) makes the page answer "server busy"; once it is
    released, the page speaks. Gradio's own queue is limited to the same number."""
    _ui_modules()
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from sambert_deploy.serve.app import ServeConfig, create_app
    from sambert_deploy.serve.ui import UiConfig, build_ui, gradio_queue_size

    app = create_app(served_synth, ServeConfig(max_concurrent=1, max_queue=0), ui=True)
    with uvicorn_on_loopback(app) as url:
        c = Client(url + "/ui/", verbose=False)
        assert app.admission.try_acquire()  # what /v1/audio/speech's admit() takes (the loop is idle here)
        try:
            with pytest.raises(AppError, match="server busy: 1 streams running"):
                c.predict("你好。", "tiny_emo", "", "F7", 1.0, api_name="/speak")
        finally:
            app.admission.release()
        *_, timing = c.predict("你好。", "tiny_emo", "", "F7", 1.0, api_name="/speak")
        assert "RTF" in timing and app.admission.idle
    blocks = build_ui(served_synth, app.admission, UiConfig(max_concurrent=3, max_queue=5))
    speak = [fn for fn in blocks.fns.values() if fn.api_name == "speak"]
    assert [fn.concurrency_limit for fn in speak] == [3]
    # Gradio has no public reader of its queue's size; the press above under max_queue=0 is the behaviour.
    assert gradio_queue_size(UiConfig(max_queue=5)) == 5 and gradio_queue_size(UiConfig(max_queue=0)) == 1


def test_gradio_routes_pass_the_outer_wrapper(live: tuple[str, Any]) -> None:
    """SpeechApp (body limit, send deadline, access log, metrics) in front of Gradio's own routes: the
    page, its assets and config, uploads within the server's body limit (a bigger one is refused by
    that limit: the page has no upload of its own), and every /ui request counted."""
    import httpx

    url, app = live
    page = httpx.get(url + "/ui/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
    assert assets, page.text[:500]
    asset = assets[0] if assets[0].startswith("http") else url + "/ui/" + assets[0].lstrip("./").removeprefix("ui/")
    assert httpx.get(asset).status_code == 200, asset
    assert httpx.get(url + "/ui/config").json()["components"]
    small = httpx.post(url + "/ui/gradio_api/upload", files={"files": ("a.txt", b"x" * 1000)})
    assert small.status_code == 200 and len(small.json()) == 1, small.text
    limit = app.config.max_body_bytes
    big = httpx.post(url + "/ui/gradio_api/upload", files={"files": ("b.txt", b"x" * (limit + 1))})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    assert httpx.get(url + "/").status_code == 200  # the static page stays at /
    metrics = httpx.get(url + "/metrics").text
    assert re.search(r'sambert_http_responses_total\{route="/ui",status="200"\} [1-9]', metrics)


def test_serve_mounts_the_page_by_default_when_gradio_is_installed(served_synth: Any) -> None:
    """`serve` without --ui/--no-ui passes ui=None: on where gradio imports; --no-ui (False) keeps it off."""
    _ui_modules()
    import httpx

    from sambert_deploy.serve.app import create_app

    for ui, status in ((None, 200), (False, 404)):
        with uvicorn_on_loopback(create_app(served_synth, ui=ui)) as url:
            assert httpx.get(url + "/ui/config").status_code == status, ui


def test_api_keys_guard_the_page(served_synth: Any) -> None:
    """With API keys the page asks for one (as the password): /v1's key check never sees /ui."""
    _ui_modules()
    import httpx

    from sambert_deploy.serve.app import ServeConfig, create_app

    app = create_app(served_synth, ServeConfig(api_keys=("k-1", "k-2")), ui=True)
    with uvicorn_on_loopback(app) as url:
        assert httpx.get(url + "/ui/config").status_code == 401
        assert httpx.post(url + "/ui/login", data={"username": "x", "password": "wrong"}).status_code == 400
        with httpx.Client(base_url=url) as h:
            assert h.post("/ui/login", data={"username": "x", "password": "k-2"}).status_code == 200
            assert h.get("/ui/config").status_code == 200


def test_browser_plays_the_stream_and_shows_the_timing(live: tuple[str, Any], tmp_path: Path) -> None:
    """Headless Chromium (Debian's) loads /ui, presses Speak and waits for the audio and the timing line.
    SAMBERT_UI_SCREENSHOT=PATH also keeps the screenshot there."""
    sync_api = need_module("playwright.sync_api", "the dev extra (pip install -e '.[dev]')")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        missing("no chromium here (apt-get install chromium; .ci/run installs it)")
    from PIL import Image

    url = live[0]
    shot = tmp_path / "ui.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe,
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/ui/")
            page.wait_for_selector("#sambert-speak", timeout=60_000)
            page.fill("#sambert-text textarea", TEXT)
            page.click("#sambert-speak")
            page.wait_for_function("document.querySelector('#sambert-timing').textContent.includes('RTF')",
                                   timeout=120_000)
            # The streamed player plays (Gradio's HLS player: hls.js over Media Source Extensions).
            page.wait_for_function("[...document.querySelectorAll('#sambert-stream audio')]"
                                   ".some((a) => a.currentTime > 0.3 && !a.error)", timeout=60_000)
            played = page.evaluate("[...document.querySelectorAll('#sambert-stream audio')]"
                                   ".map((a) => a.duration)")
            page.wait_for_selector("#sambert-wav audio[src], #sambert-wav audio source[src]", state="attached",
                                   timeout=60_000)
            timing = page.inner_text("#sambert-timing")
            voice = page.input_value("#sambert-voice input")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    keep = os.environ.get("SAMBERT_UI_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    assert not errors, errors
    assert voice == "tiny_emo"
    m = re.search(r"first audio \d+ ms .* audio (\d+\.\d\d) s · RTF \d+\.\d+", timing)
    assert m, timing
    # What the player holds is the synthesized audio (AAC frames of 64 ms at 16 kHz round it up).
    assert [d - float(m[1]) for d in played] == [pytest.approx(0.1, abs=0.1)], (played, timing)
    with Image.open(shot) as im:
        assert im.width == 1100 and im.height >= 600
        # A rendered page, not a blank one: many distinct colours.
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 50


def test_ui_command_serves_the_page_beside_the_api(tiny_bundles: dict[str, Path]) -> None:
    """`sambert-deploy ui BUNDLE` (serve's options, the page on): /ui speaks, /v1 and / stay, and SIGTERM
    drains and exits 0 like serve."""
    _ui_modules()
    import signal
    import socket
    import time

    import httpx
    from gradio_client import Client

    exe = shutil.which("sambert-deploy", path=str(Path(sys.executable).parent))
    assert exe is not None
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    p = subprocess.Popen([exe, "ui", str(tiny_bundles["causal"]), "--port", str(port), "--backend", "cpu",
                          "--max-concurrent", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120  # a bound on waiting for the start-up, not a speed claim
        while time.monotonic() < deadline and p.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(url + "/").status_code == 200
        assert httpx.get(url + "/v1/audio/voices").json()["voices"][0]["id"] == "tiny_emo"
        *_, timing = Client(url + "/ui/", verbose=False).predict("你好。", "tiny_emo", "", "F7", 1.0,
                                                               api_name="/speak")
        assert "RTF" in timing
        p.send_signal(signal.SIGTERM)
        code = p.wait(60)
        err = p.stderr.read().decode() if p.stderr else ""
    finally:
        p.kill()
    assert code == 0 and "Traceback" not in err, (code, err)
    assert "the Gradio page is at /ui (at most 1 streams at once, shared with /v1/audio/speech)" in err, err


BLOCK_GRADIO = textwrap.dedent("""
    import importlib.abc, sys
    class NoGradio(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("gradio", "gradio_client"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, NoGradio())
""")


def test_base_install_does_not_pull_gradio(tiny_bundles: dict[str, Path]) -> None:
    """pyproject keeps gradio in the ui extra only; with gradio unimportable the server module and the
    CLI import, serve logs one line that /ui is off and how to get it, and `ui` is one line, exit 2."""
    need_module("fastapi", "the serve extra (pip install -e '.[serve]')")
    tomllib = need_module("tomllib", "Python 3.11+")
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("gradio")]
    assert any(d.startswith("gradio") for d in project["optional-dependencies"]["ui"])
    bundle = tiny_bundles["causal"]
    script = BLOCK_GRADIO + textwrap.dedent(f"""
        import logging
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        from click.testing import CliRunner
        import sambert_deploy.cli as cli
        from sambert_deploy.errors import MissingExtraError
        from sambert_deploy.runtime.synthesizer import Synthesizer
        from sambert_deploy.serve.app import create_app
        with Synthesizer({str(bundle)!r}, backend="cpu") as s:
            create_app(s, ui=None)
            try:
                create_app(s, ui=True)
            except MissingExtraError as e:
                print("ui=True:", e)
        r = CliRunner().invoke(cli.main, ["ui", {str(bundle)!r}, "--port", "0"])
        print("cli ui:", r.exit_code, repr(r.stderr))
        print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in ("gradio", "gradio_client")))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    log = out.stderr
    off = [line for line in log.splitlines() if "/ui is off" in line]
    assert off == ["sambert_deploy.serve.ui: the Gradio page at /ui is off: gradio is not installed "
                   "(pip install 'sambert-deploy[ui]' to get it)"], log
    assert "ui=True: 'gradio' is not installed; it is needed here. Install it with: pip install " \
           "'sambert-deploy[ui]'" in out.stdout, out.stdout
    assert "cli ui: 2 \"error: 'gradio' is not installed; it is needed here. Install it with: pip install " \
           "'sambert-deploy[ui]'\\n\"" in out.stdout, out.stdout
    assert "imported: []" in out.stdout, out.stdout
