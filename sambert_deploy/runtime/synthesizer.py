"""The embeddable API: one :class:`Synthesizer` per bundle, shared by any number of threads and streams.

Concurrency model:

* A Synthesizer plans where every voice runs once (:func:`~.placement.plan_placement`), and opens each
  voice (its ONNX sessions and its front end) under a lock, on first use or eagerly with
  :meth:`Synthesizer.load`; sessions are shared by all streams.
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError, SynthesizerClosedError
from .backends import Backend
from .backends.select import note_level
from .cursor import UnitSource, VoiceWork
from .gpu_plan import GpuPlan, parse_bytes
from .manifest import MANIFEST, Manifest, VoiceManifest, read_manifest
from .placement import (
    Placement,
    PlacementRequest,
    StreamOptions,
    host_facts,
    lane,
    plan_placement,
    window_frames,
)
from .scheduler import Scheduler
from .schema import check_opened
from .sources import SymbolLines
from .state import StreamPlan, StreamState
from .stream import AudioChunk, Stream, StreamInfo, read_input
from .timestamps import Mark, TimedSpeech, collect
from .voices import LoadedVoice, OpenedVoice, open_voice

if TYPE_CHECKING:
    from ..frontend import FrontEnd

log = logging.getLogger(__name__)

__all__ = ["Activity", "AudioChunk", "Mark", "Placement", "SpeechOptions", "Stream", "StreamInfo", "StreamOptions",
           "Synthesizer", "TimedSpeech", "window_frames"]

SPEED_RANGE = (0.25, 4.0)


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


@dataclass(frozen=True)
class Activity:
    """A snapshot of a Synthesizer's work: streams registered, graph calls running per lane, the
    decoder steps its streams ran so far in how many graph calls (steps / calls: the mean batch), and
    the vocoder windows run in batched calls (only where windows are batched: ``vocoder_batch``)."""

    streams: int
    busy: Mapping[str, int]
    decoder_calls: int = 0
    decoder_steps: int = 0
    vocoder_calls: int = 0
    vocoder_windows: int = 0


class Synthesizer:
    """Streams speech from an exported bundle; safe to share between threads.

    ``backend``: ``auto`` (best present per stage; a provider that is listed but cannot open a
    session falls back, logged), ``cuda``, ``tensorrt``, ``openvino`` or ``cpu`` (ONNX Runtime);
    ``strict`` raises :class:`BackendUnavailableError` instead of falling back. ``am_backend``/
    ``voc_backend`` place the stages separately (``auto`` puts the vocoder on OpenVINO when it is
    installed and the acoustic model's per-step decoder on ONNX Runtime, where each measured fastest).
    ``precision``: the vocoder's, ``auto`` (the fastest variant that passed its quality gate and runs
    on the vocoder's backend) or one of fp32, fp16, bf16, int8 (an error if that variant is missing,
    failed its gate or cannot run here). ``threads``: the CPU budget shared by all streams (0: every
    CPU this process may use). ``gpu_streams``: graph calls in flight on a GPU. ``voices``: the voices
    this Synthesizer may load (default: all; the GPU memory tier and arena caps are sized over them).
    ``vocoder_threads``: intra-op threads of one vocoder call (0: all CPUs; 1, the default, measured best).
    ``decoder_batch``: streams of a voice whose decoder steps run as one graph call (default: the GPU memory
    tier's where the acoustic model runs on a GPU, else 8; 1 runs every stream's steps alone).
    ``vocoder_batch``: streams of a voice whose vocoder windows run as one graph call (default: the GPU
    memory tier's on the CUDA EP, else 1: measured no faster on CPUs; OpenVINO and TensorRT run one).
    Where everything runs is :attr:`placement`; what actually opened, :meth:`backends`/:meth:`opened`.
    """

    def __init__(self, bundle: str | Path | Manifest, voice: str | None = None, backend: str = "auto",
                 strict: bool = False, threads: int = 0, options: StreamOptions | None = None,
                 am_backend: str | None = None, voc_backend: str | None = None, gpu_streams: int | None = None,
                 precision: str = "auto", max_gpu_memory: int | str | None = None,
                 voices: Sequence[str] | None = None, vocoder_threads: int = 1, decoder_batch: int | None = None,
                 vocoder_batch: int | None = None):
        self.manifest = bundle if isinstance(bundle, Manifest) else read_manifest(bundle)
        request = PlacementRequest(backend, am_backend, voc_backend, precision, strict, threads, gpu_streams,
                                   parse_bytes(max_gpu_memory), options, vocoder_threads, decoder_batch,
                                   vocoder_batch)
        self.placement = plan_placement(self.manifest, request, host_facts(request), voices)
        default = self.manifest.voice(voice).name
        if voice is None and default not in self.placement.voices:
            default = next(iter(self.placement.voices))
        self.default_voice = self.placement.voice(default).voice
        asked = {b for b in (backend, am_backend, voc_backend) if b}
        for note in dict.fromkeys(self.placement.notes):  # both stages pass over CUDA: said once
            log.log(note_level(note, asked), "%s", note)
        for warning in self.placement.warnings:
            log.warning("%s", warning)
        p = self.placement
        self._scheduler = Scheduler({"cpu": p.cpu_budget, "cuda": p.gpu_streams})
        self._voices: dict[str, LoadedVoice] = {}
        self._load_lock = threading.Lock()
        self._closed = False
        self._order = 0
        # A Synthesizer dropped without close() must not leave its workers behind (a service that
        # reloads would collect pools). The finalizer may run in any thread, a worker holding the
        # scheduler's lock included, so it hands the shutdown to a thread of its own.
        weakref.finalize(self, _shutdown_later, self._scheduler).atexit = False
        log.info("backends planned: acoustic model on %s, vocoder on %s (precision %s); CPU budget %d thread(s); "
                 "decoder steps of up to %d streams per call", p.am_backend, p.voc_backend, request.precision,
                 p.cpu_budget, p.decoder_batch)

    # -- what was planned, what runs ----------------------------------------------------------------
    @property
    def options(self) -> StreamOptions:
        return self.placement.options

    @property
    def cpu_budget(self) -> int:
        return self.placement.cpu_budget

    @property
    def gpu_plan(self) -> GpuPlan | None:
        return self.placement.gpu

    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    def voices(self) -> list[str]:
        return list(self.placement.voices)

    def opened(self) -> dict[str, OpenedVoice]:
        """Per loaded voice, what its sessions actually opened on (with each fallback taken)."""
        with self._load_lock:
            return {name: v.opened for name, v in self._voices.items()}

    def backends(self) -> dict[str, tuple[str, str]]:
        """Per loaded voice, the backends its sessions actually opened on: (acoustic model, vocoder)."""
        return {name: (o.am_backend, o.voc_backend) for name, o in self.opened().items()}

    def precisions(self) -> dict[str, str]:
        """Per loaded voice, the precision its vocoder runs in (``auto`` resolved)."""
        return {name: o.precision for name, o in self.opened().items()}

    def sessions(self, voice: str | None = None) -> dict[str, Backend]:
        """A loaded voice's open graph sessions by graph name (observability: providers, engine contexts)."""
        v = self._voice(voice)
        return {**v.am.sessions, "vocoder": v.voc.session}

    def front_ends(self) -> dict[str, tuple[str, ...]]:
        """Per loaded voice, the user lexicons whose front end is loaded ('' = none)."""
        with self._load_lock:
            return {name: tuple(v.frontends) for name, v in self._voices.items()}

    def activity(self) -> Activity:
        # No load lock: a voice loading for seconds must not stall /health; a dict copy is atomic.
        loaded = list(self._voices.values())
        counts = [v.am.decode_group.counts() for v in loaded]
        windows = [v.voc.group.counts() for v in loaded if v.voc.group is not None]
        with self._scheduler.lock:
            return Activity(len(self._scheduler.clients()), dict(self._scheduler.busy),
                            sum(c for c, _ in counts), sum(s for _, s in counts),
                            sum(c for c, _ in windows), sum(w for _, w in windows))

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
                v.close()
            self._voices.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Synthesizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SynthesizerClosedError("this Synthesizer is closed; create a new one")

    def _voice_manifest(self, name: str | None) -> VoiceManifest:
        key = name or self.default_voice
        if key not in self.manifest.voices:
            raise InvalidInputError(f"unknown voice '{key}'; valid voices: {', '.join(self.manifest.voices)}",
                                    param="voice")
        self.placement.voice(key)  # a voice this Synthesizer does not load is named as such
        return self.manifest.voices[key]

    # -- loading (once per voice, under a lock) ---------------------------------------------------
    def _voice(self, name: str | None) -> LoadedVoice:
        vm = self._voice_manifest(name)
        v = self._voices.get(vm.name)
        if v is not None:
            return v
        with self._load_lock:
            self._check_open()
            if vm.name not in self._voices:  # another thread may have loaded it while we waited
                loaded = open_voice(self.manifest, self.placement, vm.name)
                try:
                    graphs = {g: s.inputs for g, s in loaded.am.sessions.items()}
                    check_opened(vm, self.manifest.root / MANIFEST, {**graphs, "vocoder": loaded.voc.session.inputs})
                except BaseException:
                    loaded.close()
                    raise
                self._voices[vm.name] = loaded
            return self._voices[vm.name]

    def front_end(self, voice: str | None = None, lexicon: str | Path | None = None) -> FrontEnd:
        """The voice's front end (loaded once per user lexicon, shared by its streams)."""
        return self._front_end(self._voice(voice), lexicon)

    def _front_end(self, voice: LoadedVoice, lexicon: str | Path | None) -> FrontEnd:
        from ..frontend import FrontEnd, FrontEndOptions

        key = str(Path(lexicon).resolve()) if lexicon else ""
        fe = voice.frontends.get(key)
        if fe is None:
            with self._load_lock:
                fe = voice.frontends.get(key)
                if fe is None:
                    vm = voice.manifest
                    fe = FrontEnd(FrontEndOptions(speaker=vm.speakers[0], inventories=vm.inventories,
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
        source: UnitSource
        emo = spk = None
        if text is not None:
            if isinstance(text, str) and not text.strip():
                raise InvalidInputError("nothing to synthesize: the text is empty", param="input")
            # The front end resolves the names against the voice's inventories: the one place they are.
            source = self._front_end(v, o.lexicon).reader(emotion=o.emotion, speaker=o.speaker)
            given: str | Iterable[str] | None = text
        else:
            emo = inv.resolve_emotion(o.emotion) if o.emotion is not None else None
            spk = inv.resolve_speaker(o.speaker) if o.speaker is not None else None
            if isinstance(symbols, str):  # all there: every line parsed and checked before any audio
                source, given = SymbolLines.complete(symbols, inv, emo, spk), None
            else:
                source, given = SymbolLines(), symbols
        p = self.placement
        opened = v.opened
        work = VoiceWork(v.am, v.voc, v.manifest.vocoder.hop, inv, emo, spk, text is None, 1.0 / float(o.speed),
                         p.options, self.sample_rate)
        plan = StreamPlan(v.manifest.name, work, lane(opened.am_backend), lane(opened.voc_backend),
                          self.sample_rate, p.max_ahead)
        state = StreamState(self._scheduler, plan, source, time.perf_counter())
        reader = None
        if isinstance(given, str):
            source.feed(given)
            source.finish()
        elif given is not None:
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

    def synthesize_timed(self, text: str | Iterable[str] | None = None, **kw: Any) -> TimedSpeech:
        """Whole audio of a stream with every :class:`Mark` (exact timestamps of its syllables, English
        words and breaks, and their spans in the input): :meth:`stream` collected."""
        with self.stream(text, **kw) as s:
            return collect(s, self.sample_rate)


def _shutdown_later(scheduler: Scheduler) -> None:
    threading.Thread(target=scheduler.close, kwargs={"timeout": 30.0}, name="sambert-finalize", daemon=True).start()
