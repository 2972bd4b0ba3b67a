"""The Triton model's contract as data, and the thin conversions on both sides of it.

:data:`INPUTS`, :data:`OUTPUTS` and :class:`ModelParams` are the one description of the model: the
repository writer turns them into ``config.pbtxt``, ``model.py`` reads requests and writes responses
with them inside Triton, and the gRPC client builds requests and reads responses with them. Nothing
here imports Triton or tritonclient (numpy and the runtime only), so it is tested without a server.

One request is one :meth:`Synthesizer.stream` call; every :class:`AudioChunk` of it becomes one
response, in order, then an empty final response closes the request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ...errors import ConfigError, InvalidInputError, SambertDeployError
from ...runtime.stream import AudioChunk
from ...runtime.synthesizer import SpeechOptions

MODEL_NAME = "sambert"
BACKENDS = ("auto", "cuda", "openvino", "cpu")
# Written first in every config.pbtxt: --force replaces only a repository that starts with it.
CONFIG_MARKER = "# written by sambert-deploy triton-repo"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``dims`` as config.pbtxt writes them (no batch dimension: the model
    does not batch, ``max_batch_size: 0``); ``param`` is the runtime field an input fills, the one an
    :class:`InvalidInputError` names."""

    name: str
    data_type: str  # config.pbtxt, e.g. TYPE_STRING
    client_type: str  # tritonclient / KServe v2 datatype, e.g. BYTES
    dims: tuple[int, ...]
    optional: bool = False
    param: str | None = None
    doc: str = ""


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("TEXT", "TYPE_STRING", "BYTES", (1,), False, "input",
               "UTF-8 text to speak; with SYMBOLS true, ttsfrd symbol lines"),
    TensorSpec("VOICE", "TYPE_STRING", "BYTES", (1,), True, "voice", "voice name (empty: the bundle's default)"),
    TensorSpec("EMOTION", "TYPE_STRING", "BYTES", (1,), True, "emotion", "emotion, e.g. happy, any case"),
    TensorSpec("SPEAKER", "TYPE_STRING", "BYTES", (1,), True, "speaker", "speaker token, e.g. F7"),
    TensorSpec("SPEED", "TYPE_FP32", "FP32", (1,), True, "speed", "speaking rate, 0.25 to 4 (2: twice as fast)"),
    TensorSpec("SYMBOLS", "TYPE_BOOL", "BOOL", (1,), True, "symbols", "TEXT holds ttsfrd symbol lines"),
)
OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("AUDIO", "TYPE_FP32", "FP32", (-1,), doc="float32 mono samples of this chunk, in (-1, 1)"),
    TensorSpec("SAMPLE_RATE", "TYPE_INT32", "INT32", (1,), doc="samples per second"),
    TensorSpec("SENTENCE", "TYPE_INT32", "INT32", (1,), doc="index of the chunk's sentence"),
    TensorSpec("OFFSET", "TYPE_INT64", "INT64", (1,), doc="first sample's index in the whole stream"),
    TensorSpec("SENTENCE_OFFSET", "TYPE_INT64", "INT64", (1,), doc="first sample's index in its sentence"),
    TensorSpec("SENTENCE_END", "TYPE_BOOL", "BOOL", (1,), doc="last chunk of its sentence"),
)
_INPUT_OF_PARAM = {t.param: t.name for t in INPUTS if t.param}


@dataclass(frozen=True)
class ModelParams:
    """What ``config.pbtxt``'s ``parameters`` tell each model instance. ``bundle``: absolute, or relative
    to the model's version folder (``<repo>/<model>/1``, where ``--copy-bundle`` puts it).
    ``max_concurrent``: streams one instance synthesizes at once (one thread each, all sharing one
    Synthesizer and its CPU budget ``threads``, 0 = every CPU the instance may use); more wait in order.
    ``allow_numpy2``: start even with numpy 2 in the model's Python (the 24.10 stub corrupts tensors
    under numpy 2, so the model refuses it unless told the stub is one that handles it)."""

    bundle: str
    backend: str = "auto"
    precision: str = "auto"
    threads: int = 0
    max_concurrent: int = 4
    max_input_chars: int = 4096
    allow_numpy2: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.bundle, str) or not self.bundle:
            raise ConfigError("config.pbtxt parameter 'bundle' is missing; regenerate the repository with "
                              "sambert-deploy triton-repo")
        if self.backend not in BACKENDS:
            raise ConfigError(f"config.pbtxt parameter 'backend' is {self.backend!r}; use one of {', '.join(BACKENDS)}")
        for name, low in (("threads", 0), ("max_concurrent", 1), ("max_input_chars", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"config.pbtxt parameter '{name}' must be an integer >= {low}, got {value!r}")

    def to_parameters(self) -> dict[str, str]:
        """As config.pbtxt's string-valued parameters."""
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> ModelParams:
        """From the parsed model config's ``parameters`` (``{"key": {"string_value": "..."}}``)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            entry = params.get(f.name)
            if entry is None:
                continue
            raw = entry.get("string_value", "") if isinstance(entry, dict) else str(entry)
            if f.name in ("threads", "max_concurrent", "max_input_chars"):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ConfigError(f"config.pbtxt parameter '{f.name}' must be an integer, got {raw!r}") from None
            elif f.name == "allow_numpy2":
                if raw.lower() not in ("true", "false"):
                    raise ConfigError(f"config.pbtxt parameter 'allow_numpy2' must be true or false, got {raw!r}")
                values[f.name] = raw.lower() == "true"
            else:
                values[f.name] = raw
        return cls(**values)


@dataclass(frozen=True)
class TtsRequest:
    """One request, parsed and checked: what :meth:`Synthesizer.stream` is called with."""

    text: str
    symbols: bool
    options: SpeechOptions


def parse_request(get: Callable[[str], np.ndarray | None], max_input_chars: int) -> TtsRequest:
    """Read a request's inputs through ``get(name)`` (the tensor as numpy, or None when not sent).

    Raises :class:`InvalidInputError` naming the input and the fix. Voice, emotion and speaker names
    are checked against the bundle by :meth:`Synthesizer.stream` (the same messages as everywhere).
    """
    def string(name: str) -> str | None:
        value = _scalar(get(name), name)
        if value is None:
            return None
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInputError(f"{name}: not valid UTF-8; send the text UTF-8 encoded",
                                        param=_param(name)) from None
        return str(value)

    text = string("TEXT")
    if text is None or not text.strip():
        raise InvalidInputError("TEXT: the text is empty; send the text to speak", param="input")
    if len(text) > max_input_chars:
        raise InvalidInputError(f"TEXT: {len(text)} characters is over this model's limit of {max_input_chars}; "
                                "split the text into several requests", param="input")
    speed = _scalar(get("SPEED"), "SPEED")
    symbols = _scalar(get("SYMBOLS"), "SYMBOLS")
    try:
        options = SpeechOptions(voice=string("VOICE") or None, emotion=string("EMOTION") or None,
                                speaker=string("SPEAKER") or None, speed=1.0 if speed is None else float(speed))
    except InvalidInputError as e:
        raise InvalidInputError(error_line(e), param=e.param) from None
    return TtsRequest(text, bool(symbols), options)


def _scalar(value: np.ndarray | None, name: str) -> Any:
    if value is None:
        return None
    if value.size != 1:
        raise InvalidInputError(f"{name}: expected one element, got shape {list(value.shape)}; send shape [1]",
                                param=_param(name))
    return value.reshape(-1)[0].item() if value.dtype != object else value.reshape(-1)[0]


def _param(name: str) -> str | None:
    return next((t.param for t in INPUTS if t.name == name), None)


def error_line(e: BaseException, default_param: str | None = None) -> str:
    """The one-line message a client sees, led by the input at fault when one is known:
    ``VOICE: unknown voice 'x'; valid voices: a, b``. ``default_param``: the field an
    :class:`InvalidInputError` that names none is about (the model: the text, ``input``)."""
    text = " ".join(str(e).split()) or type(e).__name__
    param = getattr(e, "param", None) or (default_param if isinstance(e, InvalidInputError) else None)
    name = _INPUT_OF_PARAM.get(param or "")
    if name and not text.startswith(f"{name}:"):
        text = f"{name}: {text}"
    if not isinstance(e, SambertDeployError):  # a bug, not the caller's mistake: say so
        text = f"internal error ({type(e).__name__}): {text}; the server log has the traceback"
    return text


def chunk_outputs(chunk: AudioChunk) -> list[tuple[str, np.ndarray]]:
    """One chunk as the response's output tensors, in :data:`OUTPUTS` order."""
    return [("AUDIO", np.ascontiguousarray(chunk.samples, np.float32)),
            ("SAMPLE_RATE", np.array([chunk.sample_rate], np.int32)),
            ("SENTENCE", np.array([chunk.sentence], np.int32)),
            ("OFFSET", np.array([chunk.offset], np.int64)),
            ("SENTENCE_OFFSET", np.array([chunk.sentence_offset], np.int64)),
            ("SENTENCE_END", np.array([chunk.final], np.bool_))]


def chunk_from_outputs(get: Callable[[str], np.ndarray]) -> AudioChunk:
    """The inverse of :func:`chunk_outputs` (the client side)."""
    return AudioChunk(np.ascontiguousarray(get("AUDIO").reshape(-1), np.float32), int(get("SAMPLE_RATE")[0]),
                      int(get("SENTENCE")[0]), int(get("OFFSET")[0]), int(get("SENTENCE_OFFSET")[0]),
                      bool(get("SENTENCE_END")[0]))


class InFlight:
    """Streams an instance is synthesizing now: a thread-safe gauge (the one piece of shared state a
    request touches), logged at every start and end so operators and tests can see it return to 0."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    def enter(self) -> int:
        with self._lock:
            self._n += 1
            return self._n

    def leave(self) -> int:
        with self._lock:
            self._n -= 1
            return self._n

    @property
    def value(self) -> int:
        with self._lock:
            return self._n
