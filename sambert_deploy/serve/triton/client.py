"""A gRPC streaming client for the Triton model (``tritonclient[grpc]``, the ``triton`` extra).

:func:`stream_speech` returns a :class:`TritonStream`: an iterator of the same
:class:`~sambert_deploy.runtime.stream.AudioChunk` objects the in-process :class:`Stream` yields, so the
runtime's sinks (WAV file, raw PCM) take either. Leaving it early (``cancel()``, ``close()``, the end of a
``with`` block) cancels the request on the server, which stops its synthesis. :func:`synthesize` collects
a whole request into a :class:`ClientResult` with its timings.
"""

from __future__ import annotations

import queue
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import BackendUnavailableError, InvalidInputError, MissingExtraError, SambertDeployError
from ...runtime.stream import AudioChunk
from .protocol import INPUTS, MODEL_NAME, chunk_from_outputs

_SPECS = {t.name: t for t in INPUTS}


class TritonRequestError(SambertDeployError):
    """Triton failed a request for a reason other than its input; the message is the server's."""


@dataclass(frozen=True)
class ClientOptions:
    """Per-request inputs (None: the model's default) and the client's own settings. ``timeout_s``: the
    longest wait for the next response before the request is cancelled and reported. ``channel_args``:
    gRPC channel options, e.g. ``(("grpc.lb_policy_name", "round_robin"),)`` with a ``dns:///`` URL of a
    headless Service to spread requests over every server (docs/triton.md)."""

    voice: str | None = None
    emotion: str | None = None
    speaker: str | None = None
    speed: float | None = None
    symbols: bool = False
    model_name: str = MODEL_NAME
    timeout_s: float = 120.0
    channel_args: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class ClientResult:
    """One request's audio (float32 mono) and what the client measured, in seconds from the request."""

    samples: np.ndarray
    sample_rate: int
    chunks: int
    sentences: int
    first_chunk_s: float | None
    elapsed_s: float

    @property
    def audio_s(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0

    @property
    def rtf(self) -> float | None:
        return self.elapsed_s / self.audio_s if self.audio_s else None


def _grpcclient() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as e:
        raise MissingExtraError(e.name or "tritonclient", "triton") from None
    return grpcclient


class TritonStream:
    """The chunks of one request as they arrive; ``arrivals_s[i]`` is when chunk ``i`` arrived (seconds
    from the request). One gRPC stream per TritonStream: use one per thread for concurrent requests."""

    def __init__(self, url: str, text: str, options: ClientOptions | None = None):
        self.url, self.options = url, options or ClientOptions()
        grpc = _grpcclient()
        self._exc = grpc.InferenceServerException
        self._queue: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self._finished = False
        self.request_id = uuid.uuid4().hex[:12]
        self.arrivals_s: list[float] = []
        inputs = self._inputs(grpc, text)
        try:
            self._client = grpc.InferenceServerClient(url, channel_args=list(self.options.channel_args) or None)
        except Exception as e:  # noqa: BLE001 - a malformed URL surfaces here, as several exception types
            raise BackendUnavailableError(f"cannot use Triton URL {url!r}: {e}; give host:port of the gRPC "
                                          "endpoint (8001 by default)") from None
        self.t0 = time.perf_counter()
        try:
            self._client.start_stream(callback=lambda result, error: self._queue.put((result, error)))
            self._client.async_stream_infer(self.options.model_name, inputs, request_id=self.request_id,
                                            enable_empty_final_response=True)
        except self._exc as e:
            self._end()
            raise BackendUnavailableError(f"cannot stream to Triton at {url}: {_message(e)}; check the URL and "
                                          "that the server is ready") from None

    def _inputs(self, grpc: Any, text: str) -> list[Any]:
        o = self.options
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}", param="input")
        values: list[tuple[str, np.ndarray]] = [("TEXT", np.array([text.encode("utf-8")], dtype=object))]
        for name, value in (("VOICE", o.voice), ("EMOTION", o.emotion), ("SPEAKER", o.speaker)):
            if value is not None:
                values.append((name, np.array([value.encode("utf-8")], dtype=object)))
        if o.speed is not None:
            values.append(("SPEED", np.array([o.speed], np.float32)))
        if o.symbols:
            values.append(("SYMBOLS", np.array([True], np.bool_)))
        out = []
        for name, array in values:
            tensor = grpc.InferInput(name, list(array.shape), _SPECS[name].client_type)
            tensor.set_data_from_numpy(array)
            out.append(tensor)
        return out

    def __iter__(self) -> TritonStream:
        return self

    def __next__(self) -> AudioChunk:
        while not self._finished:
            try:
                result, error = self._queue.get(timeout=self.options.timeout_s)
            except queue.Empty:
                self.cancel()
                raise TritonRequestError(f"no response from Triton at {self.url} for {self.options.timeout_s:.0f} s; "
                                         "the request was cancelled (raise timeout_s for very long texts)") from None
            if error is not None:
                self._end()
                raise _error(error, self.url)
            response = result.get_response()
            if response.outputs:
                self.arrivals_s.append(time.perf_counter() - self.t0)
                return chunk_from_outputs(result.as_numpy)
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                self._end()
        raise StopIteration

    @property
    def finished(self) -> bool:
        return self._finished

    def cancel(self) -> None:
        """Cancel the request on the server (its stream stops synthesizing) and close the connection."""
        if not self._finished:
            self._end(cancel=True)

    def close(self) -> None:
        self.cancel()

    def _end(self, cancel: bool = False) -> None:
        self._finished = True
        client = getattr(self, "_client", None)
        if client is None:
            return
        self._client = None
        try:
            client.stop_stream(cancel_requests=cancel)
        finally:
            client.close()

    def __enter__(self) -> TritonStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _message(e: Any) -> str:
    msg = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
    return " ".join(str(msg).split())


def _error(e: Any, url: str) -> SambertDeployError:
    """A Triton error as the project's error. A streamed response carries only the message (no status
    code), so the model's own convention decides: a message led by an input's name (``VOICE: ...``) is
    invalid input, as the model raised it."""
    msg = _message(e)
    status = str(e.status() if hasattr(e, "status") and callable(e.status) else "")
    name = msg.split(":", 1)[0]
    if name in _SPECS and msg.startswith(f"{name}: "):
        return InvalidInputError(msg, param=_SPECS[name].param)
    if "UNAVAILABLE" in status:
        return BackendUnavailableError(f"Triton at {url} is unavailable: {msg}")
    return TritonRequestError(msg)


def stream_speech(url: str, text: str, options: ClientOptions | None = None) -> TritonStream:
    """Start one request on the Triton server at ``url`` (``host:port`` of its gRPC endpoint)."""
    return TritonStream(url, text, options)


def synthesize(url: str, text: str, options: ClientOptions | None = None) -> ClientResult:
    """One whole request: the concatenated audio and the client-side timings."""
    with stream_speech(url, text, options) as s:
        chunks = list(s)
        elapsed = time.perf_counter() - s.t0
        first = s.arrivals_s[0] if s.arrivals_s else None
    samples = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    rate = chunks[0].sample_rate if chunks else 0
    return ClientResult(samples, rate, len(chunks), len({c.sentence for c in chunks}), first, elapsed)
