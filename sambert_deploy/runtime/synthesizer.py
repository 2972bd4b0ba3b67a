"""The embeddable API: one :class:`Synthesizer` per bundle, shared by any number of threads and streams.

Concurrency model:

* A Synthesizer loads each voice once (its ONNX sessions and its front end), under a lock, on first
  use or eagerly with :meth:`Synthesizer.load`; sessions are shared by all streams.
* ``threads`` (default: the CPUs this process may use) is the CPU budget of the whole Synthesizer:
  that many worker threads, each running one single-threaded graph call at a time, serve every
  stream. Concurrent streams share the budget instead of multiplying threads; the most urgent work
  (earliest audio deadline) runs first, so a new stream's first audio is not stuck behind streams
  that are already ahead of real time. On a GPU, ``gpu_streams`` workers feed the device.
* Every call gets its own :class:`~.stream.Stream` (an iterator of :class:`AudioChunk` with its
  ``info`` and ``cancel()``); per-call options are an immutable :class:`SpeechOptions`. Nothing
  about a call is stored on the Synthesizer.
* ``close()`` ends running streams with :class:`SynthesizerClosedError`, stops the workers and
  closes the sessions; a closed Synthesizer refuses new streams.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    BackendUnavailableError,
    BundleError,
    InvalidInputError,
    PrecisionError,
    SynthesizerClosedError,
)
from ..symbols import Unit, parse_units
from .acoustic import AcousticModel
from .backends import AUTO_ORDER, BackendOptions, available_backends, available_cpus, select_backend
from .cuda import probe_device
from .gpu_plan import GB, MB, RESERVE_BYTES, GpuPlan, parse_bytes, plan_for_voice
from .manifest import Manifest, VoiceManifest, read_manifest
from .precision import check_precision, choose_engine, choose_vocoder
from .scheduler import Scheduler
from .stream import AudioChunk, Stream, StreamInfo, StreamPlan, StreamState, UnitSource, read_input
from .vocoder import Vocoder

log = logging.getLogger(__name__)

__all__ = ["AudioChunk", "SpeechOptions", "Stream", "StreamInfo", "StreamOptions", "Synthesizer"]

SPEED_RANGE = (0.25, 4.0)
GPU_BACKENDS = frozenset({"cuda", "tensorrt"})


@dataclass(frozen=True)
class StreamOptions:
    """Chunking of every stream of a Synthesizer. Defaults measured by ``scripts/benchmark.py`` (README)."""

    postnet_chunk: int = 48  # mel frames per postnet chunk (one acoustic task)
    vocoder_chunk: int = 256  # mel frames per vocoder window (context overhead 35/256 for the causal one)
    first_chunk: int = 16  # first vocoder window and postnet chunk of a stream (and after waiting for input)
    max_units: int | None = 300  # split longer sentences at prosodic breaks; None: never split
    kv_block: int = 64  # decoder memory keys/values computed this many steps at a time
    max_ahead: int | None = None  # windows a stream may have waiting/running/unconsumed; None: budget + 2

    def __post_init__(self) -> None:
        for name in ("postnet_chunk", "vocoder_chunk", "first_chunk", "kv_block", "max_ahead"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"StreamOptions.{name} must be an integer >= 1, got {value!r}")
        if self.max_units is not None and (not isinstance(self.max_units, int) or self.max_units < 2):
            raise InvalidInputError(f"StreamOptions.max_units must be an integer >= 2 or None (never split), "
                                    f"got {self.max_units!r}")


def window_frames(voice: VoiceManifest, options: StreamOptions) -> int:
    """The largest vocoder window a stream of ``voice`` feeds: a regular chunk with its receptive-field
    context, or the first (shorter) one with its right context. A TensorRT profile must cover it."""
    ctx = voice.vocoder
    return max(options.vocoder_chunk + ctx.context_left + ctx.context_right, options.first_chunk + ctx.context_right)


@dataclass(frozen=True)
class SpeechOptions:
    """Per-call options of :meth:`Synthesizer.stream`. ``emotion`` and ``speaker`` names are matched
    case-insensitively against the voice (``happy`` or ``emotion_happy``); ``speed`` 2.0 speaks twice
    as fast; ``lexicon`` is a user lexicon file for the front end (see README)."""

    voice: str | None = None
    emotion: str | None = None
    speaker: str | None = None
    speed: float = 1.0
    lexicon: str | Path | None = None

    def __post_init__(self) -> None:
        lo, hi = SPEED_RANGE
        if isinstance(self.speed, bool) or not isinstance(self.speed, int | float) or not math.isfinite(self.speed) \
                or not lo <= self.speed <= hi:
            raise InvalidInputError(f"speed must be a number from {lo} to {hi}, got {self.speed!r}", param="speed")
        for name in ("voice", "emotion", "speaker"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(f"{name} must be a string, got {type(value).__name__}", param=name)


@dataclass
class _Voice:
    manifest: VoiceManifest
    am: AcousticModel
    voc: Vocoder
    am_backend: str
    voc_backend: str
    precision: str  # of the vocoder
    frontends: dict[str, Any] = field(default_factory=dict)  # lexicon path ('' = none) -> FrontEnd


class SymbolLines:
    """ttsfrd symbol lines fed in pieces (a file or stdin) -> sentences of typed units. Thread contract
    as the front end's SentenceReader: ``feed``/``finish`` from one thread, ``next_sentence`` from another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf = ""
        self._lines: list[tuple[int, str]] = []
        self._next_line = 1
        self._finished = False
        self._pending = 0
        self.last_line = 0  # line number of the sentence last returned, for errors found later

    def where(self) -> str:
        return f"symbol line {self.last_line}"

    def feed(self, piece: str) -> None:
        with self._lock:
            self._buf += piece
            *complete, self._buf = self._buf.split("\n")
            self._add(complete)

    def finish(self) -> None:
        with self._lock:
            self._add([self._buf])
            self._buf = ""
            self._finished = True

    def _add(self, lines: list[str]) -> None:
        for line in lines:
            if line.strip():
                self._lines.append((self._next_line, line))
                self._pending += len(line)
            self._next_line += 1

    def next_sentence(self) -> list[Unit] | None:
        with self._lock:
            if not self._lines:
                return None
            n, line = self._lines.pop(0)
            self._pending -= len(line)
        self.last_line = n
        try:
            return parse_units(line)
        except InvalidInputError as e:
            raise InvalidInputError(f"symbol line {n}: {e}") from None

    @property
    def done(self) -> bool:
        with self._lock:
            return self._finished and not self._lines

    @property
    def pending_chars(self) -> int:
        """Characters of complete lines not yet taken (a line still arriving is not back-pressure)."""
        with self._lock:
            return self._pending


class Synthesizer:
    """Streams speech from an exported bundle; safe to share between threads.

    ``backend``: ``auto`` (best present per stage; a provider that is listed but cannot open a
    session falls back, logged), ``cuda``, ``openvino`` or ``cpu`` (ONNX Runtime); ``strict`` raises
    :class:`BackendUnavailableError` instead of falling back. ``am_backend``/``voc_backend`` place
    the stages separately (``auto`` puts the vocoder on OpenVINO when it is installed and the
    acoustic model's per-step decoder on ONNX Runtime, where each measured fastest). ``precision``:
    the vocoder's, ``auto`` (the fastest variant that passed its quality gate and runs on the
    vocoder's backend) or one of fp32, fp16, bf16, int8 (an error if that variant is missing, failed
    its gate or cannot run here). ``threads``: the CPU budget shared by all streams (0: every CPU this
    process may use). ``gpu_streams``: graph calls in flight on a GPU.
    """

    def __init__(self, bundle: str | Path | Manifest, voice: str | None = None, backend: str = "auto",
                 strict: bool = False, threads: int = 0, options: StreamOptions | None = None,
                 am_backend: str | None = None, voc_backend: str | None = None, gpu_streams: int | None = None,
                 precision: str = "auto", max_gpu_memory: int | str | None = None):
        self.manifest = bundle if isinstance(bundle, Manifest) else read_manifest(bundle)
        if options is not None and not isinstance(options, StreamOptions):
            raise InvalidInputError(f"options must be a StreamOptions, got {type(options).__name__}")
        if threads < 0 or (gpu_streams is not None and gpu_streams < 1):
            raise InvalidInputError(f"threads must be >= 0 (0: all CPUs) and gpu_streams >= 1, got {threads}, "
                                    f"{gpu_streams}")
        budget = parse_bytes(max_gpu_memory)
        self.cpu_budget = threads or available_cpus()
        self.strict = strict
        self.precision = check_precision(precision)
        # OpenVINO's decoder step measured 2x slower than ONNX Runtime's (2.85 vs 1.35 ms a call):
        # backend="openvino" means the vocoder; the acoustic model goes there only when named.
        # TensorRT runs the vocoder; the acoustic model then stays on the same GPU through the CUDA EP.
        am_default = {"openvino": "cpu", "tensorrt": "auto"}.get(backend, backend)
        self.am_backend = select_backend(am_backend or am_default, strict, stage="am")
        self.voc_backend = select_backend(voc_backend or backend, strict, stage="vocoder")
        self._voc_backend_given = (voc_backend or backend) != "auto"
        self.default_voice = self.manifest.voice(voice).name
        self.gpu_plan = self._plan_gpu(budget, voc_backend or backend)
        plan = self.gpu_plan
        if options is None and plan is not None:
            options = StreamOptions(vocoder_chunk=plan.vocoder_chunk, postnet_chunk=plan.postnet_chunk)
        self.options = options or StreamOptions()
        gpu_streams = gpu_streams or (plan.gpu_streams if plan is not None else 2)
        self.gpu_streams = gpu_streams
        # Each graph call on the CPU is single-threaded: the budget is spent as calls running at once
        # (windows of one stream, and other streams), which uses cores better than intra-op threads
        # on these small convolutions (2 intra-op threads run a 291-frame window only 1.31x faster).
        # An explicit budget also caps the CUDA EP's arenas (a guard: the tier's sizing is what keeps the
        # total under it); without one, ORT allocates as it always has.
        sessions = len(self.manifest.voices[self.default_voice].graphs)
        self.backend_options = BackendOptions(threads=1, gpu_mem_limit=_arena_cap(plan, budget, sessions))
        self._scheduler = Scheduler({"cpu": self.cpu_budget, "cuda": gpu_streams})
        self._voices: dict[str, _Voice] = {}
        self._load_lock = threading.Lock()
        self._closed = False
        self._order = 0
        # A Synthesizer dropped without close() must not leave its workers behind (a service that
        # reloads would collect pools). The finalizer may run in any thread, a worker holding the
        # scheduler's lock included, so it hands the shutdown to a thread of its own.
        weakref.finalize(self, _shutdown_later, self._scheduler).atexit = False
        log.info("backends requested: acoustic model on %s, vocoder on %s (precision %s); CPU budget %d thread(s)",
                 self.am_backend, self.voc_backend, self.precision, self.cpu_budget)

    def _plan_gpu(self, budget: int | None, voc_requested: str) -> GpuPlan | None:
        """The memory tier where a stage runs on the GPU (None where none does): chunk sizes, calls in
        flight, and whether the vocoder fits beside the acoustic model (else, when the vocoder's
        backend was ``auto``, it moves to the CPU: the seed's "CPU offload")."""
        if not {self.am_backend, self.voc_backend} & GPU_BACKENDS:
            return None
        dev, why = probe_device(0)
        if dev is None:
            log.info("GPU memory unknown (%s): default chunking, 2 calls in flight", why)
            return None
        plan = plan_for_voice(dev.free_bytes, self.manifest, self.manifest.voices[self.default_voice], budget)
        log.info("%s: %s", dev.name, plan.describe())
        if not plan.vocoder_on_gpu and self.voc_backend in GPU_BACKENDS:
            if voc_requested == "auto":
                self.voc_backend = select_backend("auto", False, stage="vocoder", exclude=GPU_BACKENDS)
                log.info("vocoder moved to %s: the GPU budget holds the acoustic model only", self.voc_backend)
            else:
                log.warning("the GPU budget (%.1f GB) fits the acoustic model only, but the vocoder was placed on "
                            "%s: expect out-of-memory errors (use --voc-backend auto or cpu)", plan.budget / GB,
                            self.voc_backend)
        return plan

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """End running streams (they raise :class:`SynthesizerClosedError`), stop the workers, close
        the sessions. Waits at most for the graph calls running now, which are told to stop."""
        with self._scheduler.lock:
            if self._closed:
                return
            self._closed = True
            states = [c for c in self._scheduler.clients() if isinstance(c, StreamState)]
        for st in states:
            st.cancel(SynthesizerClosedError("the Synthesizer was closed while this stream was running"))
        self._scheduler.close()
        with self._load_lock:
            for v in self._voices.values():
                v.am.close()
                v.voc.close()
            self._voices.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Synthesizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    def voices(self) -> list[str]:
        return list(self.manifest.voices)

    def backends(self) -> dict[str, tuple[str, str]]:
        """Per loaded voice, the backends its sessions actually opened on: (acoustic model, vocoder)."""
        with self._load_lock:
            return {name: (v.am_backend, v.voc_backend) for name, v in self._voices.items()}

    def precisions(self) -> dict[str, str]:
        """Per loaded voice, the precision its vocoder runs in (``auto`` resolved)."""
        with self._load_lock:
            return {name: v.precision for name, v in self._voices.items()}

    def _check_open(self) -> None:
        if self._closed:
            raise SynthesizerClosedError("this Synthesizer is closed; create a new one")

    def _voice_manifest(self, name: str | None) -> VoiceManifest:
        key = name or self.default_voice
        if key not in self.manifest.voices:
            raise InvalidInputError(f"unknown voice '{key}'; valid voices: {', '.join(self.manifest.voices)}",
                                    param="voice")
        return self.manifest.voices[key]

    # -- loading (once per voice, under a lock) ---------------------------------------------------
    def _voice(self, name: str | None) -> _Voice:
        vm = self._voice_manifest(name)
        v = self._voices.get(vm.name)
        if v is not None:
            return v
        with self._load_lock:
            self._check_open()
            if vm.name not in self._voices:  # another thread may have loaded it while we waited
                self._voices[vm.name] = self._open_voice(vm)
            return self._voices[vm.name]

    def _fallbacks(self, first: str, stage: str) -> list[str]:
        """``first``, then (unless strict) the stage's later backends present here, the CPU last: a
        provider can be listed (onnxruntime-gpu, TensorRT installed) and still fail to open (no driver,
        missing CUDA libraries, no engine built for this voice)."""
        if self.strict or first == "cpu":
            return [first]
        order = AUTO_ORDER[stage]
        later = order[order.index(first) + 1:] if first in order else order
        present = available_backends()
        chain = [first, *[b for b in later if b in present and b != first]]
        return chain if "cpu" in chain else [*chain, "cpu"]

    def _open_voice(self, vm: VoiceManifest) -> _Voice:
        am_kind = am = None
        chain = self._fallbacks(self.am_backend, "am")
        for i, am_kind in enumerate(chain):
            try:
                am = AcousticModel(self.manifest, vm, am_kind, self.backend_options)
                break
            except BackendUnavailableError as e:
                if self.strict or i + 1 == len(chain):
                    raise
                log.warning("voice %s: acoustic model not on %s: %s; falling back to %s", vm.name, am_kind, e,
                            chain[i + 1])
        assert am is not None and am_kind is not None  # the CPU EP always opens (or raised)
        try:
            voc = self._open_vocoder(vm)
        except BaseException:
            am.close()
            raise
        log.info("voice %s: acoustic model on %s, vocoder on %s in %s", vm.name, am_kind, voc.choice.backend,
                 voc.choice.precision)
        return _Voice(vm, am, voc, am_kind, voc.choice.backend, voc.choice.precision)

    def _open_vocoder(self, vm: VoiceManifest) -> Vocoder:
        window = window_frames(vm, self.options)
        chain = self._fallbacks(self.voc_backend, "vocoder")
        for i, kind in enumerate(chain):
            given = (self._voc_backend_given and kind == self.voc_backend) or self.strict
            try:
                choice = (choose_engine(vm, self.precision, self.manifest.root) if kind == "tensorrt" else
                          choose_vocoder(vm, self.precision, kind, given, available_backends()))
                return Vocoder(self.manifest, vm, choice.backend, self.backend_options, choice, window_frames=window,
                               max_calls=self.gpu_streams)
            except (BackendUnavailableError, BundleError, PrecisionError) as e:
                # Past TensorRT, the ONNX graphs stay usable: an engine built for another GPU/TensorRT/graph
                # (BundleError), or a precision TensorRT cannot run (bf16) that the user did not ask of it.
                on_trt = kind == "tensorrt" and not (given and isinstance(e, PrecisionError))
                if self.strict or i + 1 == len(chain) or not (isinstance(e, BackendUnavailableError) or on_trt):
                    raise
                log.warning("voice %s: vocoder not on %s: %s; falling back to %s", vm.name, kind, e, chain[i + 1])
        raise AssertionError("unreachable: the last backend of the chain raised or returned")

    def _front_end(self, voice: _Voice, lexicon: str | Path | None) -> Any:
        from ..frontend import FrontEnd, FrontEndOptions

        key = str(Path(lexicon).resolve()) if lexicon else ""
        fe = voice.frontends.get(key)
        if fe is None:
            with self._load_lock:
                fe = voice.frontends.get(key)
                if fe is None:
                    vm = voice.manifest
                    fe = FrontEnd(FrontEndOptions(speaker=vm.speakers[0], speakers=vm.speakers,
                                                  lexicon_path=key or None))
                    voice.frontends[key] = fe
        return fe

    def load(self, voice: str | None = None, text: bool = True) -> float:
        """Open a voice's sessions (``'*'``: every voice) and, with ``text``, load the front end's
        dictionaries now rather than inside the first stream. Returns seconds."""
        self._check_open()
        t0 = time.perf_counter()
        for name in (self.voices() if voice == "*" else [voice]):
            v = self._voice(name)
            if text:
                self._front_end(v, None).sentences("你好。")  # jieba loads its dictionary on first cut
        return time.perf_counter() - t0

    # -- streaming ------------------------------------------------------------------------------
    def stream(self, text: str | Iterable[str] | None = None, *, symbols: str | Iterable[str] | None = None,
               options: SpeechOptions | None = None, voice: str | None = None, emotion: str | None = None,
               speaker: str | None = None, speed: float | None = None,
               lexicon: str | Path | None = None) -> Stream:
        """Start synthesizing; returns a :class:`Stream` of :class:`AudioChunk` at once.

        ``text``: a string, or an iterable of text pieces (a file, stdin) read as the stream needs
        them; sentences are spoken before the input ends. ``symbols``: ttsfrd symbol lines instead
        (a string or an iterable of pieces). Keyword options override ``options``. Options, voice,
        emotion and speaker are checked here; errors found in the text later (an unknown symbol on
        line 5000) are raised by the iteration.
        """
        o = options or SpeechOptions()
        overrides: dict[str, Any] = {k: v for k, v in (("voice", voice), ("emotion", emotion), ("speaker", speaker),
                                                       ("speed", speed), ("lexicon", lexicon)) if v is not None}
        if overrides:
            o = replace(o, **overrides)
        if (text is None) == (symbols is None):
            raise InvalidInputError("give exactly one of text or symbols")
        self._check_open()
        v = self._voice(o.voice)
        inv = v.manifest.inventories
        emo = inv.resolve_emotion(o.emotion) if o.emotion is not None else None
        spk = inv.resolve_speaker(o.speaker) if o.speaker is not None else None
        source: UnitSource
        given: str | Iterable[str]
        if text is not None:
            if isinstance(text, str) and not text.strip():
                raise InvalidInputError("nothing to synthesize: the text is empty", param="input")
            source = self._front_end(v, o.lexicon).reader(emotion=emo, speaker=spk)
            given = text
        else:
            source = SymbolLines()
            given = symbols  # type: ignore[assignment]  # not None: checked above
            if isinstance(symbols, str):
                _check_symbol_lines(symbols, inv, emo, spk)  # a string is all there: every error before any audio
        opts = self.options
        plan = StreamPlan(
            voice=v.manifest.name, am=v.am, voc=v.voc, am_lane=_lane(v.am_backend), voc_lane=_lane(v.voc_backend),
            sample_rate=self.sample_rate, hop=v.manifest.vocoder.hop, inventories=inv, emotion=emo, speaker=spk,
            duration_scale=1.0 / float(o.speed), postnet_chunk=opts.postnet_chunk, vocoder_chunk=opts.vocoder_chunk,
            first_chunk=opts.first_chunk, kv_block=opts.kv_block, max_units=opts.max_units,
            max_ahead=opts.max_ahead or self.cpu_budget + 2, override_units=text is None)
        state = StreamState(self._scheduler, plan, source, time.perf_counter())
        reader = None
        if isinstance(given, str):
            source.feed(given)
            source.finish()
        else:
            reader = threading.Thread(target=read_input, args=(state, given), daemon=True, name="sambert-input")
        with self._scheduler.lock:
            self._check_open()  # close() may have run while this call loaded the voice
            self._order += 1
            state.order = self._order
            self._scheduler.add(state, tuple({plan.am_lane, plan.voc_lane}))
        stream = Stream(state)  # its finalizer now owns the state's end
        if reader is not None:
            try:
                reader.start()
            except BaseException:
                state.cancel()
                raise
        return stream

    def synthesize(self, text: str | Iterable[str] | None = None, **kw: Any) -> np.ndarray:
        """Whole audio (float32) of a stream, concatenated."""
        with self.stream(text, **kw) as s:
            chunks = [c.samples for c in s]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def _shutdown_later(scheduler: Scheduler) -> None:
    threading.Thread(target=scheduler.close, kwargs={"timeout": 30.0}, name="sambert-finalize", daemon=True).start()


def _arena_cap(plan: GpuPlan | None, budget: int | None, sessions: int) -> int | None:
    """Per-session CUDA EP arena cap for an explicit ``max_gpu_memory``: ORT arenas are per session (one
    per graph of a voice), so each gets its share of what the plan leaves after the reserve."""
    if budget is None:
        return None
    usable = (plan.budget if plan is not None else budget) - RESERVE_BYTES
    return max(64 * MB, usable // sessions)


def _lane(backend: str) -> str:
    """GPU calls go to the ``gpu_streams`` workers: a CPU worker waiting on a TensorRT context would
    starve the CPU stages."""
    return "cuda" if backend in GPU_BACKENDS else "cpu"


def _check_symbol_lines(symbols: str, inv: Any, emotion: str | None, speaker: str | None) -> None:
    from ..symbols import encode_units, with_voice

    found = False
    for n, line in enumerate(symbols.splitlines(), 1):
        if not line.strip():
            continue
        try:
            units = parse_units(line)
            if units:
                encode_units(with_voice(units, emotion, speaker), inv)
                found = True
        except InvalidInputError as e:
            raise InvalidInputError(f"symbol line {n}: {e}") from None
    if not found:
        raise InvalidInputError("nothing to synthesize: the input has no symbol units")
