"""Home Assistant's Wyoming protocol over one shared :class:`~sambert_deploy.runtime.synthesizer.Synthesizer`.

A thin shell like the HTTP server: each request is one ``Synthesizer.stream()`` whose chunks go out as
``audio-chunk`` events (PCM16 mono at the model's rate, ``AudioChunk.int16``) as they are synthesized.
``synthesize`` is answered with ``audio-start``, ``audio-chunk`` x n, ``audio-stop``; the streamed
``synthesize-start``, ``-chunk`` x n, ``-stop`` with the same, then ``synthesize-stopped``, its chunks fed
into one stream as they arrive. Home Assistant also sends the whole text again as a ``synthesize`` inside
the stream, "for backwards compatibility" (homeassistant/components/wyoming/tts.py): ignored there, else
it would be spoken twice. Admission is serve's (:class:`~.admission.Admission`). A request error is one
``error`` event naming the field and the fix, then the connection closes, as wyoming-piper does: Home
Assistant ignores ``error`` events and would otherwise wait for audio that never comes. A client that
disconnects, queued or streaming, cancels its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncServer, HandlerFactory
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from ..errors import InvalidInputError, SambertDeployError
from ..runtime.synthesizer import SpeechOptions, Stream, Synthesizer
from .admission import Admission, ApiError, Slot
from .listen import bind_or_explain, tcp_socket

log = logging.getLogger(__name__)

# Mandarin voices; the front end also reads English words in the text (letter by letter or from its
# lexicon), which the description says, since Home Assistant lists voices per language.
LANGUAGES = ["zh-CN"]
MODEL_ATTRIBUTION = Attribution(name="Alibaba DAMO Academy (KAN-TTS Sambert-HiFiGAN)",
                                url="https://github.com/alibaba-damo-academy/KAN-TTS")
VARIANT_SEP = ":"


@dataclass(frozen=True)
class WyomingConfig:
    max_concurrent: int = 2
    max_queue: int = 8
    max_input_chars: int = 4096
    # A client that accepts no bytes for this long is cut and its slot freed (it could hold it forever).
    send_timeout_s: float = 30.0
    # On SIGTERM/SIGINT: running streams get this long to finish; new requests get an error meanwhile.
    shutdown_grace_s: float = 30.0


class RequestError(Exception):
    """A request refused: sent to the client as an ``error`` event with ``code``."""

    def __init__(self, text: str, code: str):
        super().__init__(text)
        self.text, self.code = text, code


def describe(synth: Synthesizer, version: str) -> Info:
    """The ``info`` answer: one TTS program listing every voice of the bundle.

    Home Assistant's voice picker lists a Wyoming voice per language by its ``description`` and sends
    its ``name`` back; a voice's ``speakers`` are never shown (only a ``speaker`` option typed into a
    ``tts.speak`` call reaches the server). So each emotion is also offered as a voice of its own,
    ``VOICE:EMOTION`` ("demo_emo:happy"), which a user can pick; the plain voice speaks with the
    voice's default emotion and lists the emotions as its speakers for clients that pass a speaker
    (a Sambert voice has one speaker token, so the speaker field has no other use here).
    """
    program_attr = Attribution(name="sambert-deploy", url=MODEL_ATTRIBUTION.url)
    voices = []
    for name in synth.voices():
        emotions = [e.removeprefix("emotion_") for e in synth.manifest.voices[name].emotions]
        several = len(emotions) > 1
        voices.append(TtsVoice(name=name, description=f"{name} (Mandarin, also reads English words)",
                               attribution=MODEL_ATTRIBUTION, installed=True, version=version, languages=LANGUAGES,
                               speakers=[TtsVoiceSpeaker(e) for e in emotions] if several else None))
        if several:
            voices += [TtsVoice(name=f"{name}{VARIANT_SEP}{e}", description=f"{name}: {e}",
                                attribution=MODEL_ATTRIBUTION, installed=True, version=version, languages=LANGUAGES)
                       for e in emotions]
    return Info(tts=[TtsProgram(name="sambert", description="Sambert-HiFiGAN streaming Chinese TTS (sambert-deploy)",
                                attribution=program_attr, installed=True, version=version, voices=voices,
                                supports_synthesize_streaming=True)])


class TextFeed:
    """Text pieces from the event loop to the stream's input thread (``Synthesizer.stream`` reads an
    iterable in a thread of its own; ``end()`` wakes it whether the text is complete or the stream cut)."""

    def __init__(self) -> None:
        self.pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.chars = 0
        self.has_words = False

    def put(self, text: str) -> None:
        self.chars += len(text)
        self.has_words = self.has_words or bool(text.strip())
        self.pieces.put(text)

    def end(self) -> None:
        self.pieces.put(None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.pieces.get, None)  # type: ignore[arg-type]


class WyomingService:
    """What every connection shares: the Synthesizer, the admission, the ``info`` answer."""

    def __init__(self, synth: Synthesizer, config: WyomingConfig | None = None):
        from .. import __version__

        self.synth, self.config = synth, config or WyomingConfig()
        self.admission = Admission(self.config.max_concurrent, self.config.max_queue)
        self.info = describe(synth, __version__)

    def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> SpeechHandler:
        return SpeechHandler(self, reader, writer)

    def options(self, voice: SynthesizeVoice | None) -> SpeechOptions:
        """A request's voice (``VOICE`` or ``VOICE:EMOTION``) and speaker (an emotion, which wins over
        the variant's), checked against the bundle."""
        names = self.synth.voices()
        name = voice.name if voice is not None and voice.name else self.synth.default_voice
        emotion = None
        if name not in names:
            base, sep, emotion = str(name).rpartition(VARIANT_SEP)
            if not sep or base not in names:
                raise RequestError(f"voice.name: unknown voice {str(name)[:100]!r}; use one of {', '.join(names)} or "
                                   f"VOICE{VARIANT_SEP}EMOTION (describe lists them all)", "voice_not_found")
            name = base
        if voice is not None and voice.speaker:
            emotion = voice.speaker
        if emotion is not None:
            try:
                emotion = self.synth.manifest.voices[name].inventories.resolve_emotion(emotion)
            except InvalidInputError as e:
                field = "voice.speaker" if voice is not None and voice.speaker else "voice.name"
                raise RequestError(f"{field}: {e} (for voice {name})", "emotion_not_found") from None
        return SpeechOptions(voice=name, emotion=emotion)

    def check_text(self, chars: int, field: str) -> None:
        if chars > self.config.max_input_chars:
            raise RequestError(f"{field}: {chars} characters is over the limit of {self.config.max_input_chars} "
                               "(split the text, or start the server with a larger --max-input-chars)", "input_too_long")


class SpeechHandler(AsyncEventHandler):
    """One connection: at most one request at a time, its audio sent by a task of its own so that the
    connection is read meanwhile (streamed text, and the client leaving, are seen at once)."""

    def __init__(self, service: WyomingService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        super().__init__(reader, writer)
        self.service = service
        self.task: asyncio.Task[None] | None = None
        self.feed: TextFeed | None = None  # the streamed request's text, from synthesize-start to -stop

    async def handle_event(self, event: Event) -> bool:
        try:
            return await self._handle(event)
        except RequestError as e:
            await self._refuse(e)
            return False
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a malformed event
            await self._refuse(RequestError(f"{event.type}: malformed event ({type(e).__name__}: {e}); see the "
                                            "Wyoming protocol's fields for it", "invalid_event"))
            return False

    async def _handle(self, event: Event) -> bool:
        svc = self.service
        if Describe.is_type(event.type):
            await self.write_event(svc.info.event())
        elif Ping.is_type(event.type):
            await self.write_event(Pong(text=Ping.from_event(event).text).event())
        elif Synthesize.is_type(event.type):
            if self.feed is not None:
                return True  # the whole text again inside a stream: already spoken from the chunks
            request = Synthesize.from_event(event)
            self._check_idle("synthesize")
            opts = svc.options(request.voice)
            text = request.text
            if not isinstance(text, str):
                raise RequestError(f"synthesize.text must be a string, got {type(text).__name__}", "invalid_event")
            if not text.strip():
                raise RequestError("synthesize.text: the text is empty; send the words to speak", "empty_text")
            svc.check_text(len(text), "synthesize.text")
            self.task = asyncio.ensure_future(self._speak(text, opts, "synthesize.text"))
        elif SynthesizeStart.is_type(event.type):
            self._check_idle("synthesize-start")
            opts = svc.options(SynthesizeStart.from_event(event).voice)
            self.feed = TextFeed()
            self.task = asyncio.ensure_future(self._speak(self.feed, opts, "synthesize-chunk.text"))
        elif SynthesizeChunk.is_type(event.type):
            if self.feed is None:
                raise RequestError("synthesize-chunk outside a stream: send synthesize-start first", "no_stream")
            text = SynthesizeChunk.from_event(event).text
            if not isinstance(text, str):
                raise RequestError("synthesize-chunk.text must be a string", "invalid_event")
            svc.check_text(self.feed.chars + len(text), "synthesize-chunk.text (the stream's text so far)")
            self.feed.put(text)
        elif SynthesizeStop.is_type(event.type):
            if self.feed is None:
                raise RequestError("synthesize-stop outside a stream: send synthesize-start first", "no_stream")
            feed, self.feed = self.feed, None
            if not feed.has_words:
                raise RequestError("synthesize-chunk.text: the stream carried no text; send the words to speak in "
                                   "synthesize-chunk events", "empty_text")
            feed.end()
        # Other events are dropped, as Wyoming servers do (a newer client's optional events).
        return True

    def _check_idle(self, what: str) -> None:
        if self.feed is not None or (self.task is not None and not self.task.done()):
            raise RequestError(f"{what}: a request is already running on this connection; wait for its audio-stop "
                               "or open another connection", "busy")

    async def disconnect(self) -> None:
        """The client left (or the connection is being closed): its stream stops, its slot is freed."""
        if self.feed is not None:
            self.feed.end()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _send(self, event: Event) -> None:
        await asyncio.wait_for(self.write_event(event), self.service.config.send_timeout_s)

    async def _refuse(self, e: RequestError) -> None:
        log.info("wyoming request refused (%s): %s", e.code, e.text)
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await self._send(Error(text=e.text, code=e.code).event())

    async def _speak(self, text: str | TextFeed, opts: SpeechOptions, field: str) -> None:
        """One request: a slot, a stream, its audio events as the chunks come; on a request error the
        ``error`` event and the connection's end. ``field``: where the text came from, for errors."""
        svc = self.service
        streamed = isinstance(text, TextFeed)
        rate = svc.synth.sample_rate
        slot: Slot | None = None
        stream: Stream | None = None
        t0 = time.perf_counter()
        first = None
        samples = 0
        try:
            await svc.admission.acquire()
            slot = Slot(svc.admission)
            stream = svc.synth.stream(text, options=opts)
            async for chunk in stream:
                if first is None:
                    first = time.perf_counter() - t0
                    await self._send(AudioStart(rate=rate, width=2, channels=1, timestamp=0).event())
                await self._send(AudioChunk(rate=rate, width=2, channels=1, audio=chunk.int16().tobytes(),
                                            timestamp=chunk.offset * 1000 // rate).event())
                samples += len(chunk.samples)
            if first is None:  # a stream that yielded no audio: still a well-formed answer
                await self._send(AudioStart(rate=rate, width=2, channels=1, timestamp=0).event())
            await self._send(AudioStop(timestamp=samples * 1000 // rate).event())
            if streamed:
                await self._send(SynthesizeStopped().event())
            log.info("wyoming speech (%s%s): %.2f s audio in %.2f s, first audio %s", opts.voice,
                     f", {opts.emotion}" if opts.emotion else "", samples / rate, time.perf_counter() - t0,
                     f"{first * 1e3:.0f} ms" if first is not None else "-")
            return
        except ApiError as e:  # the queue is full, or the server is shutting down
            error = RequestError(e.message, e.code or "server_busy")
        except SambertDeployError as e:  # found in the text as it was read (nothing speakable, a bad marker)
            error = RequestError(f"{field}: {str(e).removeprefix('input: ')}", "invalid_input")
        except asyncio.TimeoutError:
            log.warning("wyoming client accepted no audio for %g s: its stream was cut", svc.config.send_timeout_s)
            error = None
        except OSError:  # the client left while we wrote: disconnect() follows
            return
        except Exception:
            log.exception("wyoming request failed")
            error = RequestError("internal error; the server log has the details", "internal_error")
        finally:
            if stream is not None:
                stream.close()
            if isinstance(text, TextFeed):
                text.end()
            if slot is not None:
                slot.release()
        if error is not None:
            await self._refuse(error)
        await self.stop()  # ends the connection (run() sees the end of its input)


class BoundServer(AsyncServer):
    """wyoming's server on a socket bound beforehand, so that a port in use is one clear error before
    seconds of loading."""

    def __init__(self, sock: socket.socket):
        super().__init__()
        self.sock = sock
        self.server: asyncio.AbstractServer | None = None
        self.unix_path = sock.getsockname() if sock.family == getattr(socket, "AF_UNIX", None) else None

    async def start(self, handler_factory: HandlerFactory) -> None:
        callback = partial(self._handler_callback, handler_factory)
        if self.sock.family == getattr(socket, "AF_UNIX", None):
            self.server = await asyncio.start_unix_server(callback, sock=self.sock)
        else:
            self.server = await asyncio.start_server(callback, sock=self.sock)

    async def run(self, handler_factory: HandlerFactory) -> None:
        await self.start(handler_factory)
        if self.server is not None:
            await self.server.serve_forever()

    def close_listener(self) -> None:
        if self.server is not None:
            self.server.close()

    async def stop(self) -> None:
        """Closes the listener and every connection (their streams are cancelled), and waits for them."""
        self.close_listener()
        tasks = list(self._handlers)
        await super().stop()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self.unix_path:
            with contextlib.suppress(OSError):
                Path(self.unix_path).unlink()


def parse_uri(uri: str) -> tuple[str, str, int]:
    """``tcp://HOST:PORT`` -> ("tcp", host, port); ``unix://PATH`` -> ("unix", path, 0)."""
    fix = "use tcp://HOST:PORT (e.g. tcp://0.0.0.0:10200 for Home Assistant on another machine) or unix://PATH"
    try:
        u = urlparse(uri)
        port = u.port
    except ValueError as e:
        raise InvalidInputError(f"--uri {uri}: {e}; {fix}", param="uri") from None
    if u.scheme == "unix" and (u.netloc + u.path):
        return "unix", u.netloc + u.path, 0
    if u.scheme == "tcp" and u.hostname and port is not None and not u.path.strip("/"):
        return "tcp", u.hostname, port
    raise InvalidInputError(f"--uri {uri}: not a listening address; {fix}", param="uri")


def bind_uri(uri: str) -> socket.socket:
    """The listening socket for ``uri``, bound now: a bad URI or a port in use is one clear error."""
    scheme, where, port = parse_uri(uri)
    if scheme == "unix":
        path = Path(where)
        if path.exists() and not path.is_socket():
            raise InvalidInputError(f"--uri {uri}: {path} exists and is not a socket; pick another path", param="uri")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if path.exists():
            try:
                sock.connect(where)
            except OSError:
                path.unlink()  # left by a server that died: nobody answers on it
            else:
                sock.close()
                raise InvalidInputError(f"cannot listen on {uri}: a server answers there (stop it or pick another "
                                        "path)", param="uri")
        addr: Any = where
    else:
        sock, addr = tcp_socket(where, port, label=f"--uri {uri}", param="uri")
    bind_or_explain(sock, addr, where=uri, option="--uri", param="uri")
    try:
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise InvalidInputError(f"cannot listen on {uri}: {e.strerror}", param="uri") from None
    return sock


def is_loopback(uri: str) -> bool:
    scheme, host, _ = parse_uri(uri)
    return scheme == "unix" or host in ("localhost", "::1") or host.startswith("127.")


async def serve(service: WyomingService, sock: socket.socket) -> None:
    """Serves until SIGTERM/SIGINT, then drains: the listener closes, new and queued requests get an
    error, running streams get ``shutdown_grace_s`` to finish, whatever is left is cut. A second
    signal cuts at once."""
    loop = asyncio.get_running_loop()
    server = BoundServer(sock)
    await server.start(service.handler)
    signals: asyncio.Queue[int] = asyncio.Queue()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        loop.add_signal_handler(s, signals.put_nowait, s)
    try:
        sig = await signals.get()
        server.close_listener()
        service.admission.close()
        grace = service.config.shutdown_grace_s
        log.info("%s: %d stream(s) running get up to %g s to finish", signal.Signals(sig).name,
                 service.admission.running, grace)
        deadline = loop.time() + grace
        while not service.admission.idle and loop.time() < deadline and signals.empty():
            await asyncio.sleep(0.05)
        if not service.admission.idle:
            log.warning("shutting down: %d stream(s) cut", service.admission.running)
        await server.stop()
    finally:
        for s, handler in previous.items():
            loop.remove_signal_handler(s)
            signal.signal(s, handler)  # the CLI's own handlers again (remove_signal_handler resets them)


def run(service: WyomingService, sock: socket.socket) -> None:
    """Serves until SIGTERM/SIGINT (exit 0 after the drain)."""
    asyncio.run(serve(service, sock))


__all__ = ["BoundServer", "RequestError", "SpeechHandler", "TextFeed", "WyomingConfig", "WyomingService", "bind_uri",
           "describe", "is_loopback", "parse_uri", "run", "serve"]
