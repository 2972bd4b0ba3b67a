"""The Wyoming server (Home Assistant): wyoming's own AsyncTcpClient against the server on loopback.
Audio is compared with the Python API's, int16-exact; disconnects and admission are observed through
the admission's counters and ``Synthesizer.activity()``, polled with a bounded deadline."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import numpy as np
import pytest

from .conftest import need_module

need_module("wyoming", "the wyoming extra (pip install -e '.[wyoming]')")

from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.event import Event  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.tts import (  # noqa: E402
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from sambert_deploy import __version__  # noqa: E402
from sambert_deploy.runtime.synthesizer import Synthesizer  # noqa: E402
from sambert_deploy.serve.wyoming import BoundServer, WyomingConfig, WyomingService, bind_uri  # noqa: E402

TEXT = "今天天气很好。我们去公园散步吧！"
PIECES = ("今天天", "气很好。我们去", "公园散步吧！")
LONG = TEXT * 100  # far more audio than a socket buffer holds: a client that stops reading blocks it
READ_BOUND_S = 60.0  # a bound on waiting for an event (a hang fails the test), not a speed claim


@pytest.fixture(scope="module")
def synth(served_synth: Synthesizer) -> Synthesizer:
    return served_synth


def pcm16(samples: np.ndarray) -> bytes:
    """The conversion of ``AudioChunk.int16`` (runtime), applied to the Python API's whole output."""
    return np.clip(samples * 32768.0, -32768, 32767).astype(np.int16).tobytes()


@contextlib.asynccontextmanager
async def serving(synth: Synthesizer, **config: object) -> AsyncIterator[tuple[WyomingService, int]]:
    service = WyomingService(synth, WyomingConfig(**config))  # type: ignore[arg-type]
    sock = bind_uri("tcp://127.0.0.1:0")
    server = BoundServer(sock)
    await server.start(service.handler)
    try:
        yield service, sock.getsockname()[1]
    finally:
        await server.stop()
        sock.close()


def client(port: int) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", port, connect_timeout=10, read_timeout=READ_BOUND_S)


async def read_until(c: AsyncTcpClient, *types: str) -> list[Event]:
    """Events up to and including the first of ``types`` (or an error, or the connection's end)."""
    events = []
    while True:
        event = await c.read_event()
        if event is None:
            return events
        events.append(event)
        if event.type in types or Error.is_type(event.type):
            return events


def audio_of(events: Iterable[Event]) -> bytes:
    return b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))


async def until(cond: object, seconds: float = 20.0) -> bool:
    """Polls ``cond()`` until true or ``seconds`` pass (a bound on waiting, not a speed claim)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return bool(cond())  # type: ignore[operator]


async def speak(port: int, text: str, voice: SynthesizeVoice | None = None) -> list[Event]:
    async with client(port) as c:
        await c.write_event(Synthesize(text=text, voice=voice).event())
        return await read_until(c, AudioStop().event().type)


def test_info_lists_every_voice(synth: Synthesizer) -> None:
    async def scenario() -> Info:
        async with serving(synth) as (_, port), client(port) as c:
            await c.write_event(Describe().event())
            event = await c.read_event()
            assert event is not None and Info.is_type(event.type), event
            return Info.from_event(event)

    info = asyncio.run(scenario())
    (program,) = info.tts
    assert program.version == __version__ and program.supports_synthesize_streaming and program.installed
    by_name = {v.name: v for v in program.voices}
    expected = set()
    for name in synth.voices():
        emotions = [e.removeprefix("emotion_") for e in synth.manifest.voices[name].emotions]
        assert len(emotions) > 1  # the tiny voice is an emotional one: the variants are tested
        expected |= {name} | {f"{name}:{e}" for e in emotions}
        assert [s.name for s in by_name[name].speakers or []] == emotions
    assert set(by_name) == expected
    assert all(v.languages == ["zh-CN"] and v.installed for v in program.voices)
    assert "English" in by_name[synth.voices()[0]].description  # type: ignore[operator]


def test_synthesize_equals_the_python_api(synth: Synthesizer) -> None:
    voice = synth.voices()[0]
    happy = synth.synthesize(TEXT, emotion="happy")
    assert not np.array_equal(happy, synth.synthesize(TEXT))  # so the emotion's effect is visible below

    async def scenario() -> tuple[list[Event], list[Event], list[Event]]:
        async with serving(synth) as (_, port):
            return (await speak(port, TEXT), await speak(port, TEXT, SynthesizeVoice(name=f"{voice}:happy")),
                    await speak(port, TEXT, SynthesizeVoice(name=voice, speaker="Happy")))

    plain, variant, speaker = asyncio.run(scenario())
    assert AudioStart.is_type(plain[0].type) and AudioStop.is_type(plain[-1].type), [e.type for e in plain]
    start = AudioStart.from_event(plain[0])
    assert (start.rate, start.width, start.channels) == (synth.sample_rate, 2, 1)
    assert sum(AudioChunk.is_type(e.type) for e in plain) > 1  # each synthesized chunk as it came, not one blob
    assert audio_of(plain) == pcm16(synth.synthesize(TEXT))
    assert audio_of(variant) == audio_of(speaker) == pcm16(happy)


def streamed_request(voice: SynthesizeVoice | None = None) -> list[Event]:
    """What Home Assistant sends: start, the chunks, the whole text again "for compatibility", stop."""
    return [SynthesizeStart(voice=voice).event(), *(SynthesizeChunk(text=p).event() for p in PIECES),
            Synthesize(text="".join(PIECES), voice=voice).event(), SynthesizeStop().event()]


def test_streamed_text_equals_the_python_api(synth: Synthesizer) -> None:
    async def scenario() -> list[Event]:
        async with serving(synth) as (_, port), client(port) as c:
            for event in streamed_request():
                await c.write_event(event)
            return await read_until(c, SynthesizeStopped().event().type)

    events = asyncio.run(scenario())
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"], types
    assert types.count("audio-start") == 1  # the compatibility copy was not spoken again
    assert audio_of(events) == pcm16(synth.synthesize(iter(PIECES)))


def test_streamed_audio_starts_before_the_text_ends(synth: Synthesizer) -> None:
    """The first sentence is spoken while the client still holds the rest of the text back."""
    async def scenario() -> list[Event]:
        async with serving(synth) as (_, port), client(port) as c:
            await c.write_event(SynthesizeStart().event())
            await c.write_event(SynthesizeChunk(text="今天天气很好。我们").event())  # a sentence is complete
            first = await read_until(c, "audio-chunk")  # no stop sent yet: the audio must come anyway
            await c.write_event(SynthesizeChunk(text="去公园散步吧！").event())
            await c.write_event(SynthesizeStop().event())
            return first + await read_until(c, SynthesizeStopped().event().type)

    events = asyncio.run(scenario())
    assert [e.type for e in events[:2]] == ["audio-start", "audio-chunk"], [e.type for e in events]
    assert audio_of(events) == pcm16(synth.synthesize(TEXT))


def test_a_client_that_leaves_frees_its_stream_and_slot(synth: Synthesizer) -> None:
    """Leaving mid-stream cancels the stream; leaving while queued gives the queue place up."""
    async def scenario() -> None:
        async with serving(synth, max_concurrent=1, max_queue=1) as (svc, port):
            a = client(port)
            await a.connect()
            await a.write_event(Synthesize(text=LONG).event())
            assert [e.type for e in await read_until(a, "audio-chunk")] == ["audio-start", "audio-chunk"]
            b = client(port)
            await b.connect()
            await b.write_event(Synthesize(text=TEXT).event())
            assert await until(lambda: svc.admission.waiting == 1), "the second request never queued"
            await b.disconnect()
            assert await until(lambda: svc.admission.waiting == 0), "a queued client that left kept its place"
            assert svc.admission.running == 1 and synth.activity().streams == 1
            await a.disconnect()  # mid-stream, having read one chunk of minutes of audio
            assert await until(lambda: svc.admission.running == 0 and synth.activity().streams == 0), \
                (svc.admission.running, synth.activity())

    asyncio.run(scenario())


@pytest.mark.parametrize("voice, text, field, code", [
    (SynthesizeVoice(name="nobody"), TEXT, "voice.name", "voice_not_found"),
    (SynthesizeVoice(name="{voice}:furious"), TEXT, "voice.name", "emotion_not_found"),
    (SynthesizeVoice(name="{voice}", speaker="furious"), TEXT, "voice.speaker", "emotion_not_found"),
    (None, "  \n", "synthesize.text", "empty_text"),
    (None, "好" * 101, "synthesize.text", "input_too_long"),
    (None, "。。。", "synthesize.text", "invalid_input"),  # found by the stream: nothing speakable
])
def test_bad_requests_get_an_error_event_and_the_server_goes_on(
        synth: Synthesizer, voice: SynthesizeVoice | None, text: str, field: str, code: str) -> None:
    if voice is not None and voice.name:
        voice = SynthesizeVoice(name=voice.name.format(voice=synth.voices()[0]), speaker=voice.speaker)

    async def scenario() -> tuple[list[Event], list[Event]]:
        async with serving(synth, max_input_chars=100) as (_, port):
            async with client(port) as c:
                await c.write_event(Synthesize(text=text, voice=voice).event())
                refused = await read_until(c, "audio-stop")
                refused.append(await c.read_event() or Event("connection-closed"))  # closed after the error
            return refused, await speak(port, "你好。")

    refused, after = asyncio.run(scenario())
    assert [e.type for e in refused] == ["error", "connection-closed"], refused
    err = Error.from_event(refused[0])
    assert err.code == code and err.text.startswith(field), err
    assert AudioStop.is_type(after[-1].type) and audio_of(after) == pcm16(synth.synthesize("你好。"))


@pytest.mark.parametrize("voice, chunks, code", [
    (None, (" ", "\n"), "empty_text"),
    (None, ("好" * 60, "好" * 60), "input_too_long"),  # the limit counts the whole stream, not one chunk
    (SynthesizeVoice(name="nobody"), (TEXT,), "voice_not_found"),
])
def test_bad_streams_get_an_error_event(synth: Synthesizer, voice: SynthesizeVoice | None, chunks: tuple[str, ...],
                                        code: str) -> None:
    async def scenario() -> list[Event]:
        async with serving(synth, max_input_chars=100) as (svc, port), client(port) as c:
            with contextlib.suppress(OSError):  # the server may close before the last events are written
                for event in (SynthesizeStart(voice=voice).event(), *(SynthesizeChunk(text=t).event() for t in chunks),
                              SynthesizeStop().event()):
                    await c.write_event(event)
            events = await read_until(c, SynthesizeStopped().event().type)
            assert await until(lambda: svc.admission.idle and synth.activity().streams == 0)
            return events

    events = asyncio.run(scenario())
    assert [e.type for e in events] == ["error"] and Error.from_event(events[0]).code == code, events


def test_a_full_queue_is_an_error_event(synth: Synthesizer) -> None:
    async def scenario() -> tuple[list[Event], list[Event]]:
        async with serving(synth, max_concurrent=1, max_queue=0) as (svc, port):
            async with client(port) as a:
                await a.write_event(Synthesize(text=LONG).event())
                await read_until(a, "audio-chunk")  # holds the only slot, reading no further
                async with client(port) as b:
                    await b.write_event(SynthesizeStart().event())
                    await b.write_event(SynthesizeChunk(text=TEXT).event())
                    busy = await read_until(b, "audio-chunk")
            assert await until(lambda: svc.admission.idle)
            return busy, await speak(port, "你好。")

    busy, after = asyncio.run(scenario())
    assert [e.type for e in busy] == ["error"] and Error.from_event(busy[0]).code == "server_busy", busy
    assert AudioStop.is_type(after[-1].type)


# -- the command ------------------------------------------------------------------------------------------------


def _cmd(bundle: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sambert_deploy.cli", "wyoming", str(bundle), *args]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:10200", "tcp://127.0.0.1", "tcp://127.0.0.1:99999", "INUSE"])
def test_bad_uri_or_port_in_use_is_one_line_and_exit_2(tiny_bundles: dict[str, Path], uri: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        if uri == "INUSE":
            uri = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        p = subprocess.run(_cmd(tiny_bundles["causal"], "--uri", uri), capture_output=True, text=True, timeout=60)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (p.returncode, p.stderr)
    assert "--uri" in lines[0] or "cannot listen" in lines[0], lines


def test_a_unix_socket_in_use_is_refused_and_a_stale_one_reused(tmp_path: Path) -> None:
    from sambert_deploy.errors import InvalidInputError

    uri = f"unix://{tmp_path / 'tts.sock'}"
    live = bind_uri(uri)
    try:
        with pytest.raises(InvalidInputError, match="a server answers there"):
            bind_uri(uri)  # not unlinked from under the server that listens there
    finally:
        live.close()
    bind_uri(uri).close()  # the file a dead server left is replaced


@pytest.mark.parametrize("sig, transport", [("SIGTERM", "tcp"), ("SIGINT", "unix")])
def test_a_signal_drains_and_exits_0(tiny_bundles: dict[str, Path], synth: Synthesizer, tmp_path: Path, sig: str,
                                     transport: str) -> None:
    """A signal while a stream runs: the stream finishes whole, a new request gets an error event (or
    finds the listener closed), the process exits 0 without a traceback, and a Unix socket is removed."""
    import signal

    from wyoming.client import AsyncClient

    if transport == "unix":
        where = tmp_path / "tts.sock"
        uri = f"unix://{where}"
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            uri = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    p = subprocess.Popen(_cmd(tiny_bundles["causal"], "--uri", uri, "--backend", "cpu"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def connect() -> AsyncClient:
        return AsyncClient.from_uri(uri, connect_timeout=10, read_timeout=READ_BOUND_S)

    async def up() -> bool:
        with contextlib.suppress(OSError):
            async with connect() as c:
                await c.write_event(Describe().event())
                return (await c.read_event()) is not None
        return False

    async def scenario() -> tuple[list[Event], bytes]:
        deadline = time.monotonic() + 90
        while not await up():
            assert time.monotonic() < deadline and p.poll() is None, "the server did not come up"
            await asyncio.sleep(0.1)
        async with connect() as a:
            await a.write_event(Synthesize(text=TEXT * 4).event())
            first = await read_until(a, "audio-chunk")
            p.send_signal(getattr(signal, sig))
            refused: list[Event] = []
            with contextlib.suppress(OSError):  # the listener may be closed already: refused is fine too
                async with connect() as b:
                    await b.write_event(Synthesize(text=TEXT).event())
                    refused = await read_until(b, "audio-stop")
            rest = await read_until(a, "audio-stop")
        return refused, audio_of(first + rest)

    try:
        refused, audio = asyncio.run(scenario())
        code = p.wait(60)
        err = p.stderr.read().decode() if p.stderr else ""
        assert code == 0 and "Traceback" not in err, (code, err)
        assert all(Error.is_type(e.type) for e in refused), refused
        assert audio == pcm16(synth.synthesize(TEXT * 4))  # the whole stream, not a cut one
        if transport == "unix":
            assert not where.exists(), "the socket file was left behind"
    finally:
        p.kill()
