"""An OpenAI-compatible speech server over one shared :class:`~sambert_deploy.runtime.synthesizer.Synthesizer`.

FastAPI + Starlette (uvicorn to run it, with the guards of ``run.py``): async streaming responses,
request validation that also writes the OpenAPI document clients and fuzzers read, and the stack
Kokoro-FastAPI and most OpenAI-compatible TTS servers use. The server is a thin shell: every request
is one ``Synthesizer.stream()``; its chunks are encoded as they come (``encode.py``), off the event
loop for the codecs that cost CPU.

Load: at most ``max_concurrent`` streams synthesize at once and ``max_queue`` more wait; past that a
request gets 429 with ``Retry-After``. A client that disconnects, while queued or streaming, frees its
place at once; one that stops reading is cut after ``send_timeout_s``. Every response, whatever its
status, is counted in ``/metrics``; every error is OpenAI-shaped (``{"error": {message, type, param,
code}}``); anything the client sent is escaped and truncated before it reaches the log.
"""

# No `from __future__ import annotations`: FastAPI reads the request model from the live annotation.

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import InvalidInputError, SambertDeployError
from ..runtime.synthesizer import SPEED_RANGE, SpeechOptions, Synthesizer
from .admission import Admission, ApiError, Slot, admit, shutting_down
from .encode import FORMATS, encoder, encoding
from .metrics import Metrics
from .ui import UI_PATH

log = logging.getLogger(__name__)
access_log = logging.getLogger("sambert_deploy.serve.access")

MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "sambert")
STATIC = Path(__file__).parent / "static"
# Formats whose encoding is a cast (and, for 24 kHz pcm, a short filter): a thread hop would cost them
# more than the work; every other codec's work runs in the encode pool, never on the event loop.
INLINE_FORMATS = ("wav", "pcm")
# The ASGI extension the guarded uvicorn protocol (run.py) puts in the scope: aborts the connection.
ABORT_EXTENSION = "sambert.abort"
CAPTIONED = "/v1/audio/captioned_speech"
SPEECH_ROUTES = ("/v1/audio/speech", CAPTIONED)
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/audio/voices", *SPEECH_ROUTES, "/favicon.ico",
          "/favicon.svg", "/docs", "/openapi.json")


@dataclass(frozen=True)
class ServeConfig:
    max_concurrent: int = 2
    max_queue: int = 8
    max_input_chars: int = 4096
    api_keys: tuple[str, ...] = ()
    retry_after_s: int = 1
    max_body_bytes: int = 64 * 1024
    models: tuple[str, ...] = MODELS
    load_seconds: float = 0.0
    backends: dict[str, Any] = field(default_factory=dict)
    # A stream whose client has accepted no bytes for this long is cut and its slot freed.
    send_timeout_s: float = 30.0
    # A stream whose send has been blocked this long parks: its slot goes to the next in line until its
    # client reads again (admission.py). 0: never park. At most max_parked at once (None: max_concurrent
    # + max_queue).
    park_after_s: float = 0.5
    max_parked: int | None = None
    # The whole request body must arrive within this long of the headers.
    body_timeout_s: float = 10.0
    # Enforced by the uvicorn protocol in run.py (ASGI sees no connection before its headers are in):
    header_timeout_s: float = 10.0
    max_connections: int = 256
    send_buffer_bytes: int = 16 * 1024  # per connection, in the kernel (0: the kernel's autotuning)
    keep_alive_s: int = 5
    # On SIGTERM/SIGINT: running streams get this long to finish; new requests get 503 meanwhile.
    shutdown_grace_s: float = 30.0


class ClientStalled(Exception):
    """The client accepted no bytes for ``send_timeout_s``: its stream is cut."""


def printable(text: str | bytes, limit: int = 200) -> str:
    """Client-supplied text made safe for a log line: control and other non-printable characters
    escaped (no forged lines, no terminal escapes), and at most ``limit`` characters kept."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    head = text[:limit]
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in head)
    return out + (f"...(+{len(text) - limit} chars)" if len(text) > limit else "")


def _error_body(e: ApiError) -> dict[str, Any]:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


def _validation_error(errs: list[Any]) -> ApiError:
    """pydantic's first complaint as OpenAI's error: ``param`` is the top-level field at fault (never a
    union member's tag like ``voice.str``, nor a character offset)."""
    first = errs[0] if errs else {}
    loc = list(first.get("loc", ()))
    if loc and loc[0] == "body":
        loc = loc[1:]
    kind = first.get("type")
    if kind == "json_invalid":
        where = f" at character {loc[0]}" if loc and isinstance(loc[0], int) else ""
        why = (first.get("ctx") or {}).get("error")
        return ApiError(400, f"the body is not valid JSON ({why or 'parse error'}{where})", code="invalid_json")
    param = loc[0] if loc and isinstance(loc[0], str) else None
    if param is None:
        return ApiError(400, "the body must be a JSON object (Content-Type: application/json) with model, input "
                        "and voice", code="invalid_body")
    msg = "required field missing" if kind == "missing" else first.get("msg", "invalid value")
    return ApiError(400, f"{param}: {msg}", param=param)


class SpeechApp:
    """The outermost ASGI layer, in front of FastAPI's own error handling (so a 500 is counted too).

    Per request: the arrival time (time to first audio counts from it), the API key and the body limit
    on /v1/* (the body is read here, counted as it streams in, with a deadline, then handed on), a send
    deadline on the response body, one access-log line with the client's text escaped, and one count
    by route and status. Plain ASGI: Starlette's BaseHTTPMiddleware would pass every streamed chunk
    through an extra task and queue (measured: milliseconds on first byte)."""

    def __init__(self, inner: Any, config: ServeConfig, metrics: Metrics, admission: Admission):
        self.inner, self.config, self.metrics, self.admission = inner, config, metrics, admission
        self.state = inner.state
        self.draining = False
        self._keys = tuple(k.encode("utf-8") for k in config.api_keys)
        self._aborts: dict[int, Callable[[], None]] = {}  # running speech requests: cut their connection

    def drain(self) -> None:
        """New requests get 503 from now on; queued ones too. Running streams go on."""
        self.draining = True
        self.admission.close()

    @property
    def idle(self) -> bool:
        return self.admission.idle

    def abort_streams(self) -> int:
        """Cuts every running speech request's connection (the client sees a truncated body, never a
        complete-looking one). Returns how many."""
        aborts = list(self._aborts.values())
        for abort in aborts:
            abort()
        return len(aborts)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        t0 = time.perf_counter()
        info: dict[str, Any] = {"arrival": t0, "cut": None}
        scope["sambert"] = info
        status = [0]
        timeout, park_after = self.config.send_timeout_s, self.config.park_after_s

        async def guarded_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and (timeout or park_after):
                await self._send_body(send, message, info)
                return
            await send(message)

        path = scope["path"]
        abort = (scope.get("extensions") or {}).get(ABORT_EXTENSION)
        key = id(info)
        try:
            error = self._refusal(scope) if path.startswith("/v1/") else None
            body = b""
            if error is None:
                body, error = await self._read_body(receive)
            if error is not None:
                await _send_json(guarded_send, error)
                return
            if path in SPEECH_ROUTES and abort is not None:
                self._aborts[key] = abort
            await self.inner(scope, _replay(body, receive), guarded_send)
        except ClientStalled:
            log.warning("client %s accepted no bytes for %.0f s: its stream was cut", _client(scope), timeout)
            if abort is not None:
                abort()
                await asyncio.sleep(0)  # lets the transport report the loss before uvicorn checks
        finally:
            self._aborts.pop(key, None)
            # Every request of the Gradio page (its HTML, assets, queue) counts under one route label.
            route = path if path in ROUTES else UI_PATH if path.split("/")[:2] == ["", UI_PATH[1:]] else "other"
            self.metrics.response(route, status[0])
            access_log.info('%s "%s %s" %s %.0f ms%s', _client(scope), printable(scope["method"], 16),
                            printable(path), status[0] or "-", (time.perf_counter() - t0) * 1e3,
                            f" ({info['cut']})" if info["cut"] else "")

    async def _send_body(self, send: Any, message: dict[str, Any], info: dict[str, Any]) -> None:
        """One body send under the send deadline; a send blocked for ``park_after_s`` parks the
        request's slot (admission.py) and takes one back once the client has read."""
        timeout, park_after = self.config.send_timeout_s, self.config.park_after_s
        task = asyncio.ensure_future(send(message))
        slot: Slot | None = info.get("slot")
        parked = False
        try:
            waited = 0.0
            if slot is not None and park_after and (not timeout or park_after < timeout):
                done, _ = await asyncio.wait({task}, timeout=park_after)
                waited = park_after
                parked = not done and slot.park()
            done, _ = await asyncio.wait({task}, timeout=(timeout - waited) if timeout else None)
            if not done:
                info["cut"] = "stalled"
                raise ClientStalled
            task.result()
        finally:
            task.cancel()  # a no-op once done; else we were cancelled or the client stalled
        if parked and slot is not None:
            await slot.resume()

    def _refusal(self, scope: dict[str, Any]) -> ApiError | None:
        if self.draining:
            return shutting_down()
        headers = dict(scope["headers"])
        if self._keys:
            # Bytes against the key's UTF-8 bytes: a header decoded as latin-1 never equals a non-ASCII key.
            scheme, _, token = headers.get(b"authorization", b"").strip().partition(b" ")
            token = token.strip() if scheme.lower() == b"bearer" else b""
            ok = False
            for k in self._keys:  # every key compared: no early exit to time
                ok |= hmac.compare_digest(token, k)
            if not ok:
                return ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error",
                                code="invalid_api_key")
        size = headers.get(b"content-length", b"").decode("latin-1")
        if size.isdigit() and int(size) > self.config.max_body_bytes:
            return self._too_large(int(size))
        return None

    def _too_large(self, size: int) -> ApiError:
        return ApiError(413, f"request body of {size}{'+' if size > self.config.max_body_bytes else ''} bytes is over "
                        f"the {self.config.max_body_bytes}-byte limit", code="body_too_large",
                        headers={"Connection": "close"})

    async def _read_body(self, receive: Any) -> tuple[bytes, ApiError | None]:
        """The whole body, counted as it arrives (a chunked body has no Content-Length to refuse early),
        within ``body_timeout_s``."""
        parts: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                return b"", ApiError(408, f"the request body did not arrive within {self.config.body_timeout_s:g} s",
                                     code="body_timeout", headers={"Connection": "close"})
            if message["type"] != "http.request":
                return b"", ApiError(499, "the client closed the connection", code="client_gone")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.config.max_body_bytes:
                return b"", self._too_large(size)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts), None


def _replay(body: bytes, receive: Any) -> Any:
    sent = [False]

    async def replay() -> dict[str, Any]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls: the disconnect, whenever it comes

    return replay


async def _send_json(send: Any, e: ApiError) -> None:
    data = json.dumps(_error_body(e)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in e.headers.items()]
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def create_app(synth: Synthesizer, config: ServeConfig | None = None, ui: bool | None = False) -> SpeechApp:
    """The ASGI app. ``synth`` is shared by every request; the caller owns (and closes) it. ``ui``: the
    Gradio page at /ui (ui.py); None mounts it when gradio is installed and logs one line when not."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import (
            HTMLResponse,
            JSONResponse,
            PlainTextResponse,
            Response,
            StreamingResponse,
        )
        from pydantic import BaseModel, ConfigDict, Field
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as e:  # pragma: no cover - the serve extra is missing
        from ..errors import MissingExtraError

        raise MissingExtraError(e.name or "fastapi", "serve") from None

    cfg = config or ServeConfig()
    metrics = Metrics()
    metrics.load_seconds = cfg.load_seconds
    max_parked = cfg.max_parked if cfg.max_parked is not None else cfg.max_concurrent + cfg.max_queue
    admission = Admission(cfg.max_concurrent, cfg.max_queue, cfg.retry_after_s, max_parked)
    # Codec work (mp3, opus, flac, aac) off the event loop: one worker per stream that can run.
    pool = ThreadPoolExecutor(max_workers=cfg.max_concurrent, thread_name_prefix="sambert-encode")
    warned_instructions: list[bool] = []

    class VoiceRef(BaseModel):
        id: str

    class SpeechRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str = Field(description=f"Accepted and echoed; one of {', '.join(cfg.models)} or a voice name")
        input: str = Field(description=f"Text to speak, at most {cfg.max_input_chars} characters")
        voice: str | VoiceRef = Field(description="A voice id from /v1/audio/voices (or {'id': ...})")
        response_format: Literal["wav", "pcm", "flac", "mp3", "opus", "aac"] = "mp3"
        speed: float = Field(1.0, ge=SPEED_RANGE[0], le=SPEED_RANGE[1])
        stream_format: Literal["audio", "sse"] = "audio"
        instructions: str | None = None
        emotion: str | None = None
        speaker: str | None = None
        sample_rate: Literal[16000, 24000] | None = Field(None, description="pcm only: 24000 resamples")
        timestamps: bool = Field(False, description="stream_format sse only: a speech.audio.timestamps event "
                                 "before the audio each syllable/word starts in (exact times from the durations)")

    class CaptionedRequest(SpeechRequest):
        stream: bool = Field(True, description="true: one JSON line per piece of audio with the timestamps that "
                             "start in it (application/x-ndjson); false: one JSON object with all of it")

    class CutStream(StreamingResponse):
        """Closes its body generator however the response ends (a send that raised included), so the
        slot and the synthesizer stream are freed now, not when the generator is collected."""

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                await self.body_iterator.aclose()  # type: ignore[attr-defined]

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        watch = asyncio.ensure_future(_watch_loop(metrics))
        try:
            yield
        finally:
            watch.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="sambert-deploy", version=_version(), docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.synth, app.state.metrics, app.state.admission = synth, metrics, admission
    service = SpeechApp(app, cfg, metrics, admission)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(_error_body(e), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(_error_body(_validation_error(list(e.errors()))), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            err = ApiError(404, f"no route {printable(request.url.path, 100)}; the API is under /v1 (GET /v1/models, "
                           "GET /v1/audio/voices, POST /v1/audio/speech)", code="not_found")
        elif e.status_code == 405:
            err = ApiError(405, f"{printable(request.method, 16)} is not allowed on {request.url.path}",
                           code="method_not_allowed")
        else:  # FastAPI's "There was an error parsing the body" and the like
            err = ApiError(e.status_code, f"the request could not be read: {e.detail}",
                           code="invalid_body" if e.status_code == 400 else None)
        return JSONResponse(_error_body(err), status_code=e.status_code, headers=dict(e.headers or {}))

    @app.exception_handler(Exception)
    async def server_error(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse(_error_body(ApiError(500, "internal error; the server log has the details",
                                                 "server_error", code="internal_error")), status_code=500)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text("utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    @app.get("/favicon.svg", include_in_schema=False)
    async def favicon() -> Response:
        return Response((STATIC / "favicon.svg").read_bytes(), media_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})

    @app.get("/health")
    async def health() -> Any:
        body = {"status": "draining" if service.draining else "ok", "voices": synth.voices(),
                "load_seconds": round(cfg.load_seconds, 3),
                "backends": {k: list(v) for k, v in synth.backends().items()},
                "vocoder_precision": synth.precisions(), "sample_rate": synth.sample_rate,
                # What each voice opened on, with every fallback taken (as `sambert-deploy info` prints it).
                "placement": {k: o.to_json() for k, o in synth.opened().items()},
                "streams_running": admission.running, "streams_queued": admission.waiting,
                "streams_parked": admission.parked,
                # The memory tier where a stage runs on a GPU (None on a CPU-only server).
                "gpu_plan": asdict(synth.gpu_plan) if synth.gpu_plan is not None else None}
        # A load balancer stops sending here as soon as a shutdown starts.
        return JSONResponse(body, status_code=503 if service.draining else 200)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> PlainTextResponse:
        metrics.running, metrics.queued, metrics.parked = admission.running, admission.waiting, admission.parked
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "sambert-deploy"}
                                           for m in cfg.models]}

    @app.get("/v1/audio/voices")
    async def voices() -> dict[str, Any]:
        out = []
        for name in synth.voices():
            vm = synth.manifest.voices[name]
            out.append({"id": name, "name": name, "emotions": [e.removeprefix("emotion_") for e in vm.emotions],
                        "speakers": list(vm.speakers)})
        return {"voices": out}

    if ui is not False:
        from .ui import UiConfig, mount_ui

        mount_ui(app, synth, admission, UiConfig(cfg.max_concurrent, cfg.max_queue, cfg.max_input_chars, cfg.api_keys),
                 required=ui is True)

    async def start(req: SpeechRequest, request: Request) -> tuple[Any, Any, Any, Slot, dict[str, Any]]:
        """Checks a speech request, waits for a slot and starts its stream: (stream, first chunk or None,
        encoding, slot, request info). The first chunk comes before the response starts, so an error found
        by then is still a clean 4xx."""
        fmt = req.response_format
        if fmt not in FORMATS:
            raise ApiError(400, f"response_format '{fmt}' cannot be encoded here; use one of {', '.join(FORMATS)}",
                           param="response_format")
        if req.model not in cfg.models and req.model not in synth.voices():
            raise ApiError(404, f"model '{printable(req.model, 100)}' does not exist; GET /v1/models lists: "
                           f"{', '.join(cfg.models)}", param="model", code="model_not_found")
        voice = req.voice.id if isinstance(req.voice, VoiceRef) else req.voice
        if voice not in synth.voices():
            raise ApiError(404, f"voice '{printable(voice, 100)}' does not exist; GET /v1/audio/voices lists: "
                           f"{', '.join(synth.voices())}", param="voice", code="voice_not_found")
        if not req.input.strip():
            raise ApiError(400, "input: the text is empty", param="input")
        if len(req.input) > cfg.max_input_chars:
            raise ApiError(400, f"input: {len(req.input)} characters is over the limit of {cfg.max_input_chars}",
                           param="input", code="input_too_long")
        if req.sample_rate == 24000 and fmt != "pcm":
            raise ApiError(400, "sample_rate: 24000 is offered for pcm only", param="sample_rate")
        if req.instructions and not warned_instructions:
            warned_instructions.append(True)
            log.info("'instructions' is accepted and ignored (these voices take emotion= instead)")
        try:
            opts = SpeechOptions(voice=voice, emotion=req.emotion, speaker=req.speaker, speed=req.speed)
        except InvalidInputError as e:
            raise ApiError(400, str(e), param=e.param) from None
        info = request.scope.get("sambert") or {"arrival": time.perf_counter(), "cut": None}
        slot = await admit(admission, request.receive)
        info["slot"] = slot
        stream = None
        try:
            stream = synth.stream(req.input, options=opts)
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                first = None
        except BaseException as e:
            if stream is not None:
                stream.close()
            slot.release()
            if isinstance(e, SambertDeployError):
                raise ApiError(400, str(e), param=getattr(e, "param", None)) from None
            raise
        return stream, first, encoding(fmt, synth.sample_rate, req.sample_rate), slot, info

    @app.post("/v1/audio/speech", response_model=None)
    async def speech(req: SpeechRequest, request: Request) -> Any:
        if req.timestamps and req.stream_format != "sse":
            raise ApiError(400, "timestamps: needs stream_format 'sse' (or POST /v1/audio/captioned_speech)",
                           param="timestamps")
        stream, first, enc, slot, info = await start(req, request)
        fmt = req.response_format
        mode = ("sse+timestamps" if req.timestamps else "sse") if req.stream_format == "sse" else "audio"
        body = _body(stream, first, enc, synth.sample_rate, mode, request, slot, metrics, info, fmt, len(req.input),
                     None if fmt in INLINE_FORMATS else pool)
        headers = {"X-Sample-Rate": str(enc.sample_rate), "X-Model": req.model, "Cache-Control": "no-store"}
        media = "text/event-stream" if req.stream_format == "sse" else enc.content_type
        return CutStream(body, media_type=media, headers=headers)

    @app.post(CAPTIONED, response_model=None)
    async def captioned_speech(req: CaptionedRequest, request: Request) -> Any:
        """Audio with exact timestamps (Kokoro-FastAPI's captioned_speech shape): JSON lines of
        {audio: base64, audio_format, timestamps: [{word, start_time, end_time, kind, source, level}]},
        each line's timestamps those that start in its audio; or, with stream false, one such object."""
        if req.stream_format != "audio":
            raise ApiError(400, "stream_format: the captioned route streams JSON lines itself; leave stream_format "
                           "out (or use POST /v1/audio/speech with stream_format 'sse' and timestamps true)",
                           param="stream_format")
        stream, first, enc, slot, info = await start(req, request)
        fmt = req.response_format
        body = _body(stream, first, enc, synth.sample_rate, "ndjson" if req.stream else "json", request, slot,
                     metrics, info, fmt, len(req.input), None if fmt in INLINE_FORMATS else pool)
        headers = {"X-Sample-Rate": str(enc.sample_rate), "X-Model": req.model, "Cache-Control": "no-store"}
        return CutStream(body, media_type="application/x-ndjson" if req.stream else "application/json",
                         headers=headers)

    return service


async def _body(stream: Any, first: Any, enc: Any, model_rate: int, mode: str, request: Any, slot: Slot,
                metrics: Metrics, info: dict[str, Any], fmt: str, chars: int,
                pool: ThreadPoolExecutor | None) -> AsyncIterator[bytes]:
    """The response body. ``mode``: ``audio`` (the encoded bytes), ``sse`` (speech.audio.delta events),
    ``sse+timestamps`` (a speech.audio.timestamps event before the delta of each chunk that carries
    marks), ``ndjson`` (one captioned JSON line per chunk with audio or marks) or ``json`` (one captioned
    object at the end)."""
    g = encoder(enc, model_rate)
    sse = mode.startswith("sse")
    captioned = _Captions(enc.content_type) if mode in ("ndjson", "json") else None
    running: list[Any] = []  # the encoder call in the pool (a concurrent future), while one runs

    async def call(fn: Any, *args: Any) -> bytes:
        if pool is None:
            return fn(*args)
        cf = pool.submit(fn, *args)
        running[:] = [cf]
        out = await asyncio.wrap_future(cf)
        running.clear()
        return out

    t0 = info["arrival"]
    samples = 0
    outcome = "error"
    ttfa = None
    try:
        head = await call(next, g)
        chunk = first
        pending = head
        while chunk is not None:
            if ttfa is None:
                ttfa = time.perf_counter() - t0
            samples += len(chunk.samples)
            data = pending + await call(g.send, chunk.samples)
            pending = b""
            if captioned is not None:
                line = captioned.add(data, chunk.marks, mode == "ndjson")
                if line:
                    yield line
            else:
                if mode == "sse+timestamps" and chunk.marks:
                    yield _sse_timestamps(chunk.marks)
                if data:
                    yield _sse_delta(data) if sse else data
            if await request.is_disconnected():
                outcome = "disconnected"
                return
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                chunk = None
        tail = pending + await call(g.send, None)
        if captioned is not None:
            line = captioned.add(tail, (), mode == "ndjson")
            last = line if mode == "ndjson" else captioned.whole()
            if last:
                yield last
        elif tail:
            yield _sse_delta(tail) if sse else tail
        if sse:
            out_tokens = samples // 160  # 10 ms frames of audio
            usage = {"input_tokens": chars, "output_tokens": out_tokens, "total_tokens": chars + out_tokens}
            yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode()
        outcome = "ok"
    except (asyncio.CancelledError, GeneratorExit):
        outcome = "disconnected"
        raise
    finally:
        outcome = info.get("cut") or outcome
        stream.close()
        if running and not running[0].done():  # a worker is inside the encoder: close it when that call returns
            running[0].add_done_callback(lambda _: g.close())
        else:
            g.close()
        slot.release()
        wall = time.perf_counter() - t0
        audio = samples / model_rate
        metrics.observe(outcome, fmt, ttfa, wall / audio if audio else None, audio)
        synth_first = stream.info.first_audio_s
        log.info("speech %s: %s, %.2f s audio in %.2f s, first audio %s (synthesizer %s)", fmt, outcome, audio, wall,
                 f"{ttfa * 1e3:.0f} ms" if ttfa is not None else "-",
                 f"{synth_first * 1e3:.0f} ms" if synth_first is not None else "-")


async def _watch_loop(metrics: Metrics, period: float = 0.05) -> None:
    """The event loop's own lag, for /metrics: whatever blocks the loop (or starves its thread of CPU)
    delays every request, /health included; a client's ping time alone cannot tell the two apart."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(period)
        metrics.observe_lag(max(time.perf_counter() - t - period, 0.0))


def _timestamps_json(marks: Any) -> list[dict[str, Any]]:
    """Marks as Kokoro-FastAPI's word timestamps (word, start_time, end_time) and what they add here."""
    return [{"word": m.text, "start_time": round(m.start_s, 6), "end_time": round(m.end_s, 6), "kind": m.kind,
             "source": list(m.source) if m.source is not None else None, "level": m.level} for m in marks]


class _Captions:
    """The captioned route's JSON: per chunk a line, or everything gathered into one object."""

    def __init__(self, content_type: str):
        self.content_type = content_type
        self.audio: list[bytes] = []
        self.marks: list[Any] = []

    def add(self, data: bytes, marks: Any, line: bool) -> bytes:
        if not line:
            self.audio.append(data)
            self.marks.extend(marks)
            return b""
        if not data and not marks:
            return b""
        return self._render(data, marks)

    def whole(self) -> bytes:
        return self._render(b"".join(self.audio), self.marks)

    def _render(self, data: bytes, marks: Any) -> bytes:
        body = {"audio": base64.b64encode(data).decode(), "audio_format": self.content_type,
                "timestamps": _timestamps_json(marks)}
        return (json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _sse_timestamps(marks: Any) -> bytes:
    body = {"type": "speech.audio.timestamps", "timestamps": _timestamps_json(marks)}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


def _sse_delta(data: bytes) -> bytes:
    return f"data: {json.dumps({'type': 'speech.audio.delta', 'audio': base64.b64encode(data).decode()})}\n\n".encode()


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["ServeConfig", "SpeechApp", "create_app", "printable"]
