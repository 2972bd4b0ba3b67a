"""Where each stage of each voice runs: one pure function, :func:`plan_placement`.

(manifest, voices to load, what the caller asked for, facts about this host) -> a :class:`Placement`:
per voice the acoustic model's backend chain and the vocoder's candidate chain (precision and backend,
TensorRT engine or ONNX graph), the GPU memory tier sized over *all* the voices, the stream chunking,
the CUDA EP arena caps and the CPU/GPU call budgets. The Synthesizer, ``info``, ``engines``,
``triton-repo`` and the server's ``/health`` all read this one record; :mod:`.voices` opens it and
records what actually opened (a listed provider can still fail to open: no driver, an engine built
for another GPU), so what is reported is what runs.

Nothing here opens a session or touches a GPU: :func:`host_facts` gathers the facts (and probes the GPU
only where a stage would run on one, so a CPU-only run never creates a CUDA context).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..errors import (
    BackendUnavailableError,
    BundleError,
    InvalidInputError,
    PrecisionError,
    SambertDeployError,
)
from .backends import (
    AUTO_ORDER,
    BACKENDS,
    BackendOptions,
    available_backends,
    available_cpus,
    choose_backend,
    cpu_flags,
    unavailable_reason,
)
from .batching import DEFAULT_MAX_BATCH
from .cuda import DeviceInfo, probe_device
from .gpu_plan import MB, RESERVE_BYTES, GpuPlan, decoder_step_bytes, plan_gpu
from .manifest import Manifest, VoiceManifest
from .precision import VocoderChoice, check_precision, choose_engine, choose_vocoder

log = logging.getLogger(__name__)

GPU_BACKENDS = frozenset({"cuda", "tensorrt"})


@dataclass(frozen=True)
class StreamOptions:
    """Chunking of every stream of a Synthesizer. Defaults measured by ``scripts/benchmark.py`` (README)."""

    postnet_chunk: int = 128  # mel frames per postnet chunk (one acoustic task; the FSMN recomputes 160 of context)
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
class PlacementRequest:
    """What the caller asked for. ``backend`` places both stages (``openvino`` means the vocoder: the
    decoder step measured 2x slower there; ``tensorrt`` runs the vocoder, the acoustic model then goes
    where ``auto`` puts it); ``am_backend``/``voc_backend`` place one stage. ``max_gpu_memory`` in bytes.
    ``decoder_batch``: streams whose decoder steps run as one graph call (None: the GPU memory tier's where
    the acoustic model runs on a GPU, else ``DEFAULT_MAX_BATCH``; 1 runs each stream's steps alone).
    ``vocoder_batch``: streams whose vocoder windows run as one call (None: the tier's where the vocoder
    runs on the CUDA EP, else 1: on CPUs a batched call costs what the single calls do, README)."""

    backend: str = "auto"
    am_backend: str | None = None
    voc_backend: str | None = None
    precision: str = "auto"
    strict: bool = False
    threads: int = 0
    gpu_streams: int | None = None
    max_gpu_memory: int | None = None
    options: StreamOptions | None = None
    vocoder_threads: int = 1  # intra-op threads of one vocoder call (1 measured best: README; the sweep varies it)
    decoder_batch: int | None = None
    vocoder_batch: int | None = None

    def __post_init__(self) -> None:
        for name in ("backend", "am_backend", "voc_backend"):
            value = getattr(self, name)
            if value is not None and value not in BACKENDS:
                raise InvalidInputError(f"backend '{value}' is unknown; choose one of {', '.join(BACKENDS)}",
                                        param=name)
        if self.am_backend == "tensorrt":
            raise InvalidInputError("TensorRT runs the vocoder only; put the acoustic model on cuda or cpu "
                                    "(--am-backend cuda)", param="am_backend")
        check_precision(self.precision)
        if self.options is not None and not isinstance(self.options, StreamOptions):
            raise InvalidInputError(f"options must be a StreamOptions, got {type(self.options).__name__}")
        if self.threads < 0 or self.vocoder_threads < 0 or (self.gpu_streams is not None and self.gpu_streams < 1):
            raise InvalidInputError(f"threads must be >= 0 (0: all CPUs) and gpu_streams >= 1, got {self.threads}, "
                                    f"{self.gpu_streams}")
        for name, per in (("decoder_batch", "decoder"), ("vocoder_batch", "vocoder")):
            batch = getattr(self, name)
            if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
                raise InvalidInputError(f"{name} must be an integer >= 1 (streams per {per} call; 1 turns "
                                        f"batching off), got {batch!r}", param=name)

    @property
    def am_requested(self) -> str:
        return self.am_backend or {"openvino": "cpu", "tensorrt": "auto"}.get(self.backend, self.backend)

    @property
    def voc_requested(self) -> str:
        return self.voc_backend or self.backend


@dataclass(frozen=True)
class HostFacts:
    """What this machine offers: backends present (best first), why the others are absent, the CPUs this
    process may use, and GPU 0's memory where it was probed (``gpu_note`` says why not otherwise)."""

    backends: tuple[str, ...]
    missing: Mapping[str, str] = field(default_factory=dict)
    cpus: int = 1
    gpu: DeviceInfo | None = None
    gpu_note: str = "not probed"
    cpu_features: frozenset[str] = frozenset()  # the CPU's flags (cpu_flags()): AMX reorders auto's vocoder


def host_facts(request: PlacementRequest | None = None) -> HostFacts:
    """This machine's facts; GPU 0 is probed (a CUDA context) only where ``request`` puts a stage on a GPU."""
    present = tuple(available_backends())
    missing = {b: unavailable_reason(b) for b in BACKENDS if b not in present and b != "auto"}
    facts = HostFacts(present, missing, available_cpus(), cpu_features=cpu_flags())
    if request is not None and set(_select_both(request, facts)[0]) & GPU_BACKENDS:
        dev, why = probe_device(0)
        facts = replace(facts, gpu=dev, gpu_note=why)
    return facts


@dataclass(frozen=True)
class VocoderCandidate:
    """One step of a vocoder's fallback chain: the backend tried, the graph/engine it would run (or the
    error that rules it out, raised or skipped by :func:`~.voices.open_voice`'s one rule), and whether the
    user named this backend (then its precision errors are theirs to see)."""

    backend: str
    choice: VocoderChoice | None
    error: SambertDeployError | None
    given: bool


@dataclass(frozen=True)
class VoicePlacement:
    voice: str
    am_chain: tuple[str, ...]  # acoustic model: backends to try, in order
    vocoder_chain: tuple[VocoderCandidate, ...]
    window_frames: int  # the largest vocoder window its streams feed


@dataclass(frozen=True)
class Placement:
    """Everything about where and how a Synthesizer's voices run (see the module doc)."""

    request: PlacementRequest
    am_backend: str  # the acoustic model's first choice after selection
    voc_backend: str  # the vocoder's
    voices: Mapping[str, VoicePlacement]
    options: StreamOptions
    cpu_budget: int  # graph calls running at once on the CPU
    gpu_streams: int  # graph calls in flight on a GPU
    max_ahead: int  # windows a stream may have outstanding
    gpu: GpuPlan | None  # the memory tier where a stage runs on a GPU (None where none does)
    backend_options: BackendOptions
    notes: tuple[str, ...] = ()  # decisions worth a log line (a backend absent, the vocoder moved off the GPU)
    warnings: tuple[str, ...] = ()  # a placement that will likely fail (a stage placed where it cannot fit)
    vocoder_mem_limit: int | None = None  # a vocoder session's CUDA arena cap (arena_caps); None: no budget

    @property
    def decoder_batch(self) -> int:
        """Streams per decoder call where the acoustic model runs as planned."""
        return self.decoder_batch_on(self.am_backend)

    def decoder_batch_on(self, backend: str) -> int:
        """Streams per decoder call for an acoustic model that opened on ``backend`` (a fallback off the
        GPU gets the CPU's batch): the request's ``decoder_batch``, else the GPU tier's on a GPU, else
        ``DEFAULT_MAX_BATCH``."""
        if self.request.decoder_batch is not None:
            return self.request.decoder_batch
        if backend in GPU_BACKENDS and self.gpu is not None:
            return self.gpu.decoder_batch
        return DEFAULT_MAX_BATCH

    def vocoder_batch_on(self, backend: str) -> int:
        """Windows per vocoder call for a vocoder that opened on ``backend``: the request's
        ``vocoder_batch``, else the GPU tier's on the CUDA EP, else 1 (TensorRT engines run one window)."""
        if self.request.vocoder_batch is not None:
            return self.request.vocoder_batch
        if backend == "cuda" and self.gpu is not None:
            return self.gpu.vocoder_batch
        return 1

    def voice(self, name: str) -> VoicePlacement:
        if name not in self.voices:
            raise InvalidInputError(f"voice '{name}' is not loaded by this Synthesizer (it loads "
                                    f"{', '.join(self.voices)}); create it with that voice", param="voice")
        return self.voices[name]


def lane(backend: str) -> str:
    """The scheduler lane a stage on ``backend`` runs on: GPU calls go to the ``gpu_streams`` workers (a
    CPU worker waiting on a TensorRT context would starve the CPU stages), everything else to the CPU's."""
    return "cuda" if backend in GPU_BACKENDS else "cpu"


def select_stage(requested: str, stage: str, host: HostFacts, strict: bool = False,
                 exclude: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """:func:`~.backends.choose_backend` on ``host``'s facts: the backend for ``stage``, with a note per
    backend passed over."""
    return choose_backend(requested, stage, host.backends, host.missing, strict, exclude)


def plan_placement(manifest: Manifest, request: PlacementRequest, host: HostFacts,
                   voices: Sequence[str] | None = None) -> Placement:
    """The placement of ``voices`` (default: every voice of the bundle) for ``request`` on ``host``.

    Pure: the same inputs give the same record; nothing is opened. Errors that only opening a voice
    would meet (a precision its vocoder lacks) are kept in the candidate chain, so they surface when
    that voice is used, as they always did.
    """
    names = list(voices) if voices is not None else list(manifest.voices)
    for name in names:
        if name not in manifest.voices:
            raise InvalidInputError(f"unknown voice '{name}'; valid voices: {', '.join(manifest.voices)}",
                                    param="voice")
    if not names:
        raise InvalidInputError("a placement needs at least one voice", param="voice")
    vms = [manifest.voices[n] for n in names]
    (am_first, voc_first), notes = _select_both(request, host)
    warnings: list[str] = []
    gpu: GpuPlan | None = None
    if {am_first, voc_first} & GPU_BACKENDS:
        if host.gpu is None:
            notes.append(f"GPU memory unknown ({host.gpu_note}): default chunking, 2 calls in flight, "
                         f"decoder steps of up to {request.decoder_batch or DEFAULT_MAX_BATCH} streams per call")
        else:
            gpu = plan_for_voices(host.gpu.free_bytes, manifest, vms, request.max_gpu_memory, request.decoder_batch,
                                  request.vocoder_batch)
            notes.append(f"{host.gpu.name}: {gpu.describe()}")
            if not gpu.vocoder_on_gpu and voc_first in GPU_BACKENDS:
                if request.voc_requested == "auto":
                    voc_first, more = select_stage("auto", "vocoder", host, exclude=GPU_BACKENDS)
                    notes += [*more, f"vocoder moved to {voc_first}: the GPU budget holds the acoustic model only"]
                else:
                    warnings.append(f"the GPU budget ({gpu.budget / (1 << 30):.1f} GB) fits the acoustic model only, but "
                                 f"the vocoder was placed on {voc_first}: expect out-of-memory errors (use "
                                 "--voc-backend auto or cpu)")
    options = request.options
    if options is None:
        options = (StreamOptions(vocoder_chunk=gpu.vocoder_chunk, postnet_chunk=gpu.postnet_chunk)
                   if gpu is not None else StreamOptions())
    cpu_budget = request.threads or host.cpus
    gpu_streams = request.gpu_streams or (gpu.gpu_streams if gpu is not None else 2)
    sessions = sum(len(vm.graphs) for vm in vms)
    # Each graph call on the CPU is single-threaded: the budget is spent as calls running at once
    # (windows of one stream, and other streams), which uses cores better than intra-op threads on these
    # small convolutions (2 intra-op threads run a 291-frame window only 1.31x faster).
    cap, vocoder_cap = arena_caps(gpu, request.max_gpu_memory, sessions, len(vms))
    backend_options = BackendOptions(threads=1, gpu_mem_limit=cap)
    voc_given = request.voc_requested != "auto"
    placed = {}
    for vm in vms:
        am_chain = fallback_chain(am_first, "am", host, request.strict)
        voc_chain = tuple(_vocoder_candidate(manifest, vm, kind, request, host,
                                             (voc_given and kind == voc_first) or request.strict)
                          for kind in fallback_chain(voc_first, "vocoder", host, request.strict))
        placed[vm.name] = VoicePlacement(vm.name, am_chain, voc_chain, window_frames(vm, options))
    return Placement(request, am_first, voc_first, placed, options, cpu_budget, gpu_streams,
                     options.max_ahead or cpu_budget + 2, gpu, backend_options, tuple(notes), tuple(warnings),
                     vocoder_mem_limit=vocoder_cap)


def plan_for_voices(free_bytes: int, manifest: Manifest, voices: Sequence[VoiceManifest],
                    max_gpu_memory: int | None = None, decoder_batch: int | None = None,
                    vocoder_batch: int | None = None) -> GpuPlan:
    """The memory tier for every voice loaded together: all their weights, the widest vocoder window's
    context and the largest decoder's windows (the calls in flight are shared by the voices);
    ``decoder_batch``/``vocoder_batch`` override the tiers' streams per decoder/vocoder call."""
    weights = sum((manifest.root / vm.folder / g.file).stat().st_size for vm in voices for g in vm.graphs.values())
    hop = max(vm.vocoder.hop for vm in voices)
    context = max(vm.vocoder.context_left for vm in voices)
    step = max(decoder_step_bytes(vm.acoustic.decoder_layers, vm.acoustic.decoder_heads, vm.acoustic.decoder_head_dim)
               for vm in voices)
    return plan_gpu(free_bytes, weights, hop, max_gpu_memory, context, step, decoder_batch, vocoder_batch)


def arena_caps(plan: GpuPlan | None, budget: int | None, sessions: int,
               vocoders: int = 1) -> tuple[int | None, int | None]:
    """Per-session CUDA EP arena caps for an explicit ``max_gpu_memory``, (every session, a vocoder's):
    ORT arenas are per session (one per graph of every loaded voice) and keep their peak, so each gets its
    share of what the plan leaves after the reserve and the vocoder calls in flight
    (``GpuPlan.vocoder_bytes``: with a vocoder batch, several windows per call), and each of the
    ``vocoders`` (one per voice, any of which may run every call) that share plus those calls: every
    arena at its cap still fits. Without a budget, ORT allocates as it always has."""
    if budget is None:
        return None, None
    usable = (plan.budget if plan is not None else budget) - RESERVE_BYTES
    calls = plan.vocoder_bytes if plan is not None else 0
    share = max(64 * MB, (usable - vocoders * calls) // max(1, sessions))
    return share, share + calls


def fallback_chain(first: str, stage: str, host: HostFacts, strict: bool) -> tuple[str, ...]:
    """``first``, then (unless strict) the stage's later backends present here, the CPU last: a provider
    can be listed (onnxruntime-gpu, TensorRT installed) and still fail to open (no driver, missing CUDA
    libraries, no engine built for this voice)."""
    if strict or first == "cpu":
        return (first,)
    order = AUTO_ORDER[stage]
    later = order[order.index(first) + 1:] if first in order else order
    chain = [first, *[b for b in later if b in host.backends and b != first]]
    return tuple(chain if "cpu" in chain else [*chain, "cpu"])


def _select_both(request: PlacementRequest, host: HostFacts) -> tuple[tuple[str, str], list[str]]:
    am, notes = select_stage(request.am_requested, "am", host, request.strict)
    voc, more = select_stage(request.voc_requested, "vocoder", host, request.strict)
    return (am, voc), notes + more


def _vocoder_candidate(manifest: Manifest, vm: VoiceManifest, kind: str, request: PlacementRequest,
                       host: HostFacts, given: bool) -> VocoderCandidate:
    try:
        choice = (choose_engine(vm, request.precision, manifest.root) if kind == "tensorrt" else
                  choose_vocoder(vm, request.precision, kind, given, list(host.backends), host.cpu_features))
    except (BackendUnavailableError, BundleError, PrecisionError) as e:
        return VocoderCandidate(kind, None, e, given)
    return VocoderCandidate(kind, choice, None, given)


def skips(candidate: VocoderCandidate, error: SambertDeployError) -> bool:
    """Whether a vocoder candidate that failed with ``error`` gives way to the next one (else it is raised):
    a backend that cannot start, or anything past TensorRT (an engine built for another GPU/TensorRT/graph,
    or a precision TensorRT cannot run that the user did not ask of it): the ONNX graphs stay usable."""
    on_trt = candidate.backend == "tensorrt" and not (candidate.given and isinstance(error, PrecisionError))
    return isinstance(error, BackendUnavailableError) or (on_trt and isinstance(error, BundleError | PrecisionError))
