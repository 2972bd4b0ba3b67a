"""The embeddable API: text or symbol lines in, a generator of :class:`AudioChunk` out.

Layers: sentences (front end, or symbol lines split at prosodic breaks when longer than
``max_units``) -> :class:`~.acoustic.AcousticModel` (decoder steps -> postnet chunks) ->
:class:`~.vocoder.Vocoder` (context-window chunks) -> chunks yielded as soon as each is ready.
Nothing is normalized per chunk: the concatenated stream equals the one-shot output.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import InvalidInputError
from ..frontend import split_units
from ..symbols import SPECIALS, encode_symbols
from .acoustic import AcousticModel
from .backends import BackendOptions, available_cpus, select_backend
from .manifest import Manifest, VoiceManifest, read_manifest
from .vocoder import Vocoder

log = logging.getLogger(__name__)
T = TypeVar("T")

@dataclass(frozen=True)
class AudioChunk:
    """A piece of the stream. ``samples`` float32 mono in (-1, 1)."""

    samples: np.ndarray
    sample_rate: int
    sentence: int  # index of the sentence this chunk belongs to
    offset: int  # first sample's index in the whole stream
    sentence_offset: int  # first sample's index inside its sentence
    final: bool  # last chunk of its sentence

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    def int16(self) -> np.ndarray:
        """PCM16 the way ModelScope converts (x * 32768, cast), clipped so +1.0 cannot wrap."""
        return np.clip(self.samples * 32768.0, -32768, 32767).astype(np.int16)


@dataclass
class StreamOptions:
    """Chunking and synthesis options. Defaults measured by ``scripts/benchmark.py`` (README)."""

    postnet_chunk: int = 48  # mel frames per postnet chunk
    vocoder_chunk: int = 256  # mel frames per vocoder chunk (context overhead 35/256 for the causal one)
    first_chunk: int = 24  # first vocoder chunk of each sentence: smaller, for first-audio latency
    pipelined: bool = True  # acoustic model in a worker thread, overlapping the vocoder
    max_units: int | None = 300  # split longer symbol lines at prosodic breaks; None: never split
    kv_block: int = 64  # decoder memory keys/values computed this many steps at a time
    vocoder_workers: int | None = None  # vocoder windows run at once; None: 2 on a multi-core CPU, else 1
    duration_scale: float = 1.0  # > 1 slower speech, < 1 faster

    def validate(self) -> None:
        for name in ("postnet_chunk", "vocoder_chunk", "first_chunk", "kv_block", "vocoder_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_units is not None and self.max_units < 2:
            raise InvalidInputError(f"max_units must be >= 2 or None (no splitting), got {self.max_units}")
        if not self.duration_scale > 0:
            raise InvalidInputError(f"duration_scale must be > 0, got {self.duration_scale}")


@dataclass
class StreamStats:
    """Filled while a stream runs (read it after the generator is exhausted)."""

    sentences: int = 0
    units: int = 0
    frames: int = 0
    samples: int = 0
    first_audio_s: float | None = None
    total_s: float = 0.0


def _in_thread(it: Iterator[T], depth: int = 8) -> Iterator[T]:
    """Run a producer iterator in a worker thread with a bounded queue (memory stays bounded).

    ONNX Runtime releases the GIL while a graph runs, so the acoustic model's single-threaded
    step loop overlaps the vocoder's windows.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, val: object) -> bool:
        """Wait for room, unless the consumer has gone (then never block: the thread must end)."""
        while not stop.is_set():
            try:
                q.put((kind, val), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in it:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as e:  # handed to the consumer, raised there
            put("error", e)

    t = threading.Thread(target=work, name="sambert-acoustic", daemon=True)
    t.start()
    try:
        while True:
            kind, val = q.get()
            if kind == "done":
                return
            if kind == "error":
                assert isinstance(val, BaseException)
                raise val
            yield val
    finally:
        stop.set()
        # A generator left in a reference cycle (an exception's traceback holds its frame) is
        # finalized by the garbage collector in whichever thread runs it, the worker included.
        if threading.current_thread() is not t:
            t.join(timeout=5)


@dataclass(frozen=True)
class _SentenceStart:
    """Marks where a sentence's mel blocks begin in the acoustic model's output stream."""

    index: int
    frames: int


def _take_frames(items: Iterator[_SentenceStart | np.ndarray], total: int) -> Iterator[np.ndarray]:
    """The next ``total`` frames of mel blocks from a stream shared by all sentences."""
    got = 0
    while got < total:
        block = next(items, None)
        if not isinstance(block, np.ndarray):
            raise RuntimeError(f"acoustic stream ended after {got} of {total} frames of a sentence")
        got += block.shape[0]
        yield block


def _normalize_name(value: str, prefix: str) -> str:
    return value if value.startswith(prefix) else prefix + value


class Synthesizer:
    """Streams speech from an exported bundle.

    ``backend``: ``auto`` (best present, fallbacks logged), ``cuda`` or ``cpu``; ``strict`` raises
    :class:`BackendUnavailableError` instead of falling back. ``am_backend``/``voc_backend`` place the
    stages separately (e.g. the acoustic model on the GPU, the vocoder on the CPU for small GPUs).
    """

    def __init__(self, bundle: str | Path | Manifest, voice: str | None = None, backend: str = "auto",
                 strict: bool = False, threads: int = 0, options: StreamOptions | None = None,
                 am_backend: str | None = None, voc_backend: str | None = None):
        self.manifest = bundle if isinstance(bundle, Manifest) else read_manifest(bundle)
        self.options = options or StreamOptions()
        self.options.validate()
        self.backend_options = BackendOptions(threads=threads)
        chosen = select_backend(backend, strict) if not (am_backend and voc_backend) else "cpu"
        self.am_backend = select_backend(am_backend, strict) if am_backend else chosen
        self.voc_backend = select_backend(voc_backend, strict) if voc_backend else chosen
        log.info("backends: acoustic model on %s, vocoder on %s", self.am_backend, self.voc_backend)
        self.vocoder_workers, self.vocoder_options = self._vocoder_threads(threads)
        self.default_voice = self.manifest.voice(voice).name
        self._models: dict[str, tuple[AcousticModel, Vocoder]] = {}
        self._frontend: Any = None  # FrontEnd, imported lazily (jieba loads its dictionary on first use)
        self.last_stats = StreamStats()

    def _vocoder_threads(self, threads: int) -> tuple[int, BackendOptions]:
        """How many vocoder windows run at once, and the vocoder session's intra-op pool size.

        ``threads`` (0: every CPU this process may use) is the CPU budget. The acoustic model takes
        one thread (its worker). Windows running at once on one ORT session share its intra-op pool,
        each calling thread joining in, so W windows with a pool of T threads keep T - 1 + W threads
        busy: T = budget - W (at least 1) fills the budget. Two windows at once is the measured
        default on 2 cores (1200 units: RTF 0.188 -> 0.135, README); on a GPU the vocoder runs one
        window at a time.
        """
        budget = threads or available_cpus()
        workers = self.options.vocoder_workers
        if workers is None:
            workers = 2 if self.voc_backend == "cpu" and budget >= 2 else 1
        if self.voc_backend == "cpu":
            threads = max(1, budget - workers)
        return workers, replace(self.backend_options, threads=threads)

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        for am, voc in self._models.values():
            am.close()
            voc.close()
        self._models.clear()

    def __enter__(self) -> Synthesizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    def voices(self) -> list[str]:
        return list(self.manifest.voices)

    def _voice(self, name: str | None) -> VoiceManifest:
        key = name or self.default_voice
        if key not in self.manifest.voices:
            raise InvalidInputError(f"unknown voice '{key}'; valid voices: {', '.join(self.manifest.voices)}")
        return self.manifest.voices[key]

    def _models_for(self, vm: VoiceManifest) -> tuple[AcousticModel, Vocoder]:
        if vm.name not in self._models:
            self._models[vm.name] = (AcousticModel(self.manifest, vm, self.am_backend, self.backend_options),
                                     Vocoder(self.manifest, vm, self.voc_backend, self.vocoder_options))
        return self._models[vm.name]

    # -- input ----------------------------------------------------------------------------------
    def _check_emotion(self, vm: VoiceManifest, emotion: str | None) -> str | None:
        if emotion is None:
            return None
        name = _normalize_name(emotion, "emotion_")
        if name not in vm.emotions:
            valid = ", ".join(e.removeprefix("emotion_") for e in vm.emotions)
            raise InvalidInputError(f"unknown emotion '{emotion}' for voice '{vm.name}'; valid emotions: {valid}")
        return name

    def _check_speaker(self, vm: VoiceManifest, speaker: str | None) -> str | None:
        if speaker is not None and speaker not in vm.speakers:
            raise InvalidInputError(f"unknown speaker '{speaker}' for voice '{vm.name}'; valid speakers: "
                                    f"{', '.join(vm.speakers)}")
        return speaker

    def symbol_lines(self, text: str | None, symbols: str | Iterable[str] | None, vm: VoiceManifest,
                     emotion: str | None, speaker: str | None) -> list[str]:
        """The sentences to synthesize, as ttsfrd symbol strings (``<n>\\t`` prefixes accepted and dropped)."""
        if (text is None) == (symbols is None):
            raise InvalidInputError("give exactly one of text or symbols")
        if text is not None:
            lines = self._front_end(vm).sentences(text, emotion=emotion, speaker=speaker)
        else:
            raw = symbols.splitlines() if isinstance(symbols, str) else list(symbols or [])
            lines = []
            for line in raw:
                line = line.split("\t", 1)[1] if "\t" in line else line
                if line.strip():
                    lines.append(line.strip())
            if emotion or speaker:
                lines = [self._override(line, emotion, speaker) for line in lines]
        if not lines:
            raise InvalidInputError("nothing to synthesize: the input has no speakable text or symbol units")
        return lines

    @staticmethod
    def _override(line: str, emotion: str | None, speaker: str | None) -> str:
        out = []
        for unit in line.split():
            f = unit.strip("{}").split("$")
            if len(f) == 6:
                if emotion and f[4] not in ("emotion_none", *SPECIALS):
                    f[4] = emotion
                if speaker:
                    f[5] = speaker
                unit = "{" + "$".join(f) + "}"
            out.append(unit)
        return " ".join(out)

    def _front_end(self, vm: VoiceManifest):  # noqa: ANN202 - frontend type imported lazily
        from ..frontend import FrontEnd, FrontEndOptions

        if self._frontend is None:
            self._frontend = FrontEnd(FrontEndOptions(speaker=vm.speakers[0], speakers=vm.speakers))
        return self._frontend

    def load(self, voice: str | None = None, text: bool = True) -> float:
        """Open the voice's sessions and, with ``text``, load the front end's dictionaries now rather
        than inside the first stream (so its first-audio time is synthesis only). Returns seconds."""
        t0 = time.perf_counter()
        vm = self._voice(voice)
        self._models_for(vm)
        if text:
            self._front_end(vm).sentences("你好。")  # Chinese text: jieba loads its dictionary on first cut
        return time.perf_counter() - t0

    # -- streaming ------------------------------------------------------------------------------
    def stream(self, text: str | None = None, *, symbols: str | Iterable[str] | None = None, voice: str | None = None,
               emotion: str | None = None, speaker: str | None = None) -> Iterator[AudioChunk]:
        """Yield audio chunks as soon as each is ready. Input is validated before the first chunk."""
        vm = self._voice(voice)
        emotion = self._check_emotion(vm, emotion)
        speaker = self._check_speaker(vm, speaker)
        lines = self.symbol_lines(text, symbols, vm, emotion, speaker)
        limit = self.options.max_units
        pieces = [p for line in lines for p in (split_units(line.split(), limit) if limit else [line.split()])]
        encoded = [encode_symbols(" ".join(p), vm.inventories) for p in pieces]  # all errors before any audio
        return self._stream(vm, encoded)

    def _stream(self, vm: VoiceManifest, encoded: list) -> Iterator[AudioChunk]:  # noqa: ANN001
        am, voc = self._models_for(vm)
        o = self.options
        stats = StreamStats()
        self.last_stats = stats
        t0 = time.perf_counter()
        # One producer for all sentences: in the worker thread the acoustic model goes on to the next
        # sentence while the vocoder finishes this one's last windows (its queue bounds how far ahead).
        items: Iterator[_SentenceStart | np.ndarray] = self._acoustic(am, encoded, stats)
        if o.pipelined:
            items = _in_thread(items)
        offset = 0
        for head in items:
            assert isinstance(head, _SentenceStart)
            s_off = 0
            for audio, last in voc.stream(_take_frames(items, head.frames), head.frames, o.vocoder_chunk,
                                          o.first_chunk, self.vocoder_workers):
                yield self._chunk(audio, head.index, offset, s_off, last, stats, t0)
                offset += len(audio)
                s_off += len(audio)
        stats.samples = offset
        stats.total_s = time.perf_counter() - t0

    def _acoustic(self, am: AcousticModel, encoded: list, stats: StreamStats  # noqa: ANN001
                  ) -> Iterator[_SentenceStart | np.ndarray]:
        """Each sentence as a :class:`_SentenceStart` followed by its mel blocks (postnet output)."""
        o = self.options
        for idx, units in enumerate(encoded):
            plan = am.plan(units, duration_scale=o.duration_scale)
            stats.sentences += 1
            stats.units += units.num_units
            stats.frames += plan.valid_frames
            if plan.valid_frames == 0:
                log.warning("sentence %d produced no frames (all durations round to 0)", idx)
                continue
            yield _SentenceStart(idx, plan.valid_frames)
            yield from am.postnet(am.decode(plan, o.kv_block), plan.valid_frames, o.postnet_chunk)

    def _chunk(self, samples: np.ndarray, idx: int, offset: int, s_off: int, final: bool, stats: StreamStats,
               t0: float) -> AudioChunk:
        if stats.first_audio_s is None:
            stats.first_audio_s = time.perf_counter() - t0
        return AudioChunk(np.ascontiguousarray(samples, np.float32), self.sample_rate, idx, offset, s_off, final)

    def synthesize(self, text: str | None = None, **kw: object) -> np.ndarray:
        """Whole audio (float32) of a stream, concatenated."""
        chunks = [c.samples for c in self.stream(text, **kw)]  # type: ignore[arg-type]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
