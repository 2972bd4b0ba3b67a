"""An OpenAI-compatible speech server over one shared :class:`~sambert_deploy.runtime.synthesizer.Synthesizer`.

FastAPI + Starlette (uvicorn to run it): async streaming responses, request validation that also
writes the OpenAPI document clients and fuzzers read, and the stack Kokoro-FastAPI and most
OpenAI-compatible TTS servers use. The server is a thin shell: every request is one
``Synthesizer.stream()``; its chunks are encoded as they come (``encode.py``).

Load: at most ``max_concurrent`` streams synthesize at once and ``max_queue`` more wait; past that a
request gets 429 with ``Retry-After``. A client that disconnects cancels its stream and frees its slot.
"""

# No `from __future__ import annotations`: FastAPI reads the request model from the live annotation.

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import InvalidInputError, SambertDeployError
from ..runtime.synthesizer import SPEED_RANGE, SpeechOptions, Synthesizer
from .encode import FORMATS, encoder, encoding
from .metrics import Metrics

log = logging.getLogger(__name__)

MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "sambert")
STATIC = Path(__file__).parent / "static"


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


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


class Admission:
    """At most ``active`` holders and ``queue`` waiters; beyond that ``acquire`` refuses at once."""

    def __init__(self, active: int, queue: int, retry_after_s: int = 1):
        self.active, self.queue, self.retry_after_s = active, queue, retry_after_s
        self.running = 0
        self.waiting = 0
        self._cond = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._cond:
            if self.running >= self.active and self.waiting >= self.queue:
                raise ApiError(429, f"server busy: {self.running} streams running and {self.waiting} queued; retry "
                               "later", "rate_limit_error", code="server_busy",
                               headers={"Retry-After": str(self.retry_after_s)})
            self.waiting += 1
            try:
                await self._cond.wait_for(lambda: self.running < self.active)
            finally:
                self.waiting -= 1
            self.running += 1

    async def release(self) -> None:
        async with self._cond:
            self.running -= 1
            self._cond.notify()


def _error_body(e: ApiError) -> dict[str, Any]:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


def create_app(synth: Synthesizer, config: ServeConfig | None = None) -> Any:
    """The ASGI app. ``synth`` is shared by every request; the caller owns (and closes) it."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
        from pydantic import BaseModel, ConfigDict, Field
    except ImportError as e:  # pragma: no cover - the serve extra is missing
        from ..errors import MissingExtraError

        raise MissingExtraError(e.name or "fastapi", "serve") from None

    cfg = config or ServeConfig()
    metrics = Metrics()
    metrics.load_seconds = cfg.load_seconds
    admission = Admission(cfg.max_concurrent, cfg.max_queue, cfg.retry_after_s)
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

    app = FastAPI(title="sambert-deploy", version=_version(), docs_url="/docs", redoc_url=None)
    app.state.synth, app.state.metrics, app.state.admission = synth, metrics, admission

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(_error_body(e), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        return JSONResponse(_error_body(ApiError(400, f"{param or 'body'}: {msg}", param=param)), status_code=400)

    def refusal(headers: dict[bytes, bytes]) -> ApiError | None:
        if cfg.api_keys:
            got = headers.get(b"authorization", b"").decode("latin-1")
            token = got[7:] if got.lower().startswith("bearer ") else ""
            if not any(hmac.compare_digest(token.encode(), k.encode()) for k in cfg.api_keys):
                return ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error",
                                code="invalid_api_key")
        size = headers.get(b"content-length", b"").decode("latin-1")
        if size.isdigit() and int(size) > cfg.max_body_bytes:
            return ApiError(413, f"request body of {size} bytes is over the {cfg.max_body_bytes}-byte limit",
                            code="body_too_large")
        return None

    class Guard:
        """API key and body size on /v1/*, as plain ASGI: Starlette's BaseHTTPMiddleware would pass
        every streamed chunk through an extra task and queue (measured: milliseconds on first byte)."""

        def __init__(self, inner: Any):
            self.inner = inner

        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].startswith("/v1/"):
                e = refusal(dict(scope["headers"]))
                if e is not None:
                    await JSONResponse(_error_body(e), status_code=e.status)(scope, receive, send)
                    return
            await self.inner(scope, receive, send)

    app.add_middleware(Guard)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text("utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "voices": synth.voices(), "load_seconds": round(cfg.load_seconds, 3),
                "backends": {k: list(v) for k, v in synth.backends().items()},
                "vocoder_precision": synth.precisions(), "sample_rate": synth.sample_rate,
                # What each voice opened on, with every fallback taken (as `sambert-deploy info` prints it).
                "placement": {k: o.to_json() for k, o in synth.opened().items()},
                "streams_running": admission.running, "streams_queued": admission.waiting,
                # The memory tier where a stage runs on a GPU (None on a CPU-only server).
                "gpu_plan": asdict(synth.gpu_plan) if synth.gpu_plan is not None else None}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> PlainTextResponse:
        metrics.running, metrics.queued = admission.running, admission.waiting
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

    @app.post("/v1/audio/speech", response_model=None)
    async def speech(req: SpeechRequest, request: Request) -> Any:
        fmt = req.response_format
        if fmt not in FORMATS:
            raise ApiError(400, f"response_format '{fmt}' cannot be encoded here (no AAC encoder ships in a wheel); "
                           f"use one of {', '.join(FORMATS)}", param="response_format")
        if req.model not in cfg.models and req.model not in synth.voices():
            raise ApiError(404, f"model '{req.model}' does not exist; GET /v1/models lists: {', '.join(cfg.models)}",
                           param="model", code="model_not_found")
        voice = req.voice.id if isinstance(req.voice, VoiceRef) else req.voice
        if voice not in synth.voices():
            raise ApiError(404, f"voice '{voice}' does not exist; GET /v1/audio/voices lists: "
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
        await admission.acquire()
        t0 = time.perf_counter()
        stream = None
        try:
            # The first chunk before the response starts: an error found by then is still a clean 4xx.
            stream = synth.stream(req.input, options=opts)
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                first = None
        except BaseException as e:
            if stream is not None:
                stream.close()
            await admission.release()
            if isinstance(e, SambertDeployError):
                raise ApiError(400, str(e), param=getattr(e, "param", None)) from None
            raise
        enc = encoding(fmt, synth.sample_rate, req.sample_rate)
        body = _body(stream, first, enc, synth.sample_rate, req.stream_format == "sse", request, admission,
                     metrics, t0, fmt, len(req.input))
        headers = {"X-Sample-Rate": str(enc.sample_rate), "X-Model": req.model, "Cache-Control": "no-store"}
        media = "text/event-stream" if req.stream_format == "sse" else enc.content_type
        return StreamingResponse(body, media_type=media, headers=headers)

    return app


async def _body(stream: Any, first: Any, enc: Any, model_rate: int, sse: bool, request: Any, admission: Admission,
                metrics: Metrics, t0: float, fmt: str, chars: int) -> AsyncIterator[bytes]:
    g = encoder(enc, model_rate)
    samples = 0
    outcome = "error"
    ttfa = None
    try:
        head = next(g)
        chunk = first
        pending = head
        while chunk is not None:
            if ttfa is None:
                ttfa = time.perf_counter() - t0
            samples += len(chunk.samples)
            data = pending + g.send(chunk.samples)
            pending = b""
            if data:
                yield _sse_delta(data) if sse else data
            if await request.is_disconnected():
                outcome = "disconnected"
                return
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                chunk = None
        tail = pending + g.send(None)
        if tail:
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
        stream.close()
        g.close()
        await admission.release()
        wall = time.perf_counter() - t0
        audio = samples / model_rate
        metrics.observe(outcome, fmt, ttfa, wall / audio if audio else None, audio)
        synth_first = stream.info.first_audio_s
        log.info("speech %s: %s, %.2f s audio in %.2f s, first audio %s (synthesizer %s)", fmt, outcome, audio, wall,
                 f"{ttfa * 1e3:.0f} ms" if ttfa is not None else "-",
                 f"{synth_first * 1e3:.0f} ms" if synth_first is not None else "-")


def _sse_delta(data: bytes) -> bytes:
    return f"data: {json.dumps({'type': 'speech.audio.delta', 'audio': base64.b64encode(data).decode()})}\n\n".encode()


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["ServeConfig", "create_app"]
