"""``sambert-deploy engines``: TensorRT engines for a bundle's vocoder, one strongly typed path for
TensorRT 10 and 11.

TensorRT 11 builds strongly typed networks only (its FP16/INT8 builder flags and the INT8 calibrator
are gone); TensorRT 10 does the same when asked with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
(11 keeps the flag and ignores it). So the precision is the ONNX's: the FP32 graph, the FP16 variant
(casts inserted by ``sambert-deploy quantize``), or a symmetric INT8 Q/DQ variant
(``quantize --int8-symmetric``). Jetson's JetPack ships TensorRT 10: the same code builds there.

Only the vocoder gets an engine: it is 60-84% of the work and a static convolution stack TensorRT fuses
well. The acoustic model's per-step decoder (one frame group a call, a key/value window fed back) is
bound by launch overhead, not kernels, and stays on the CUDA EP with its state on the device.

Input mistakes (an unknown precision, a variant the bundle lacks or that failed its gate, an INT8
variant TensorRT cannot take) are found before TensorRT or a GPU is looked for, so they fail the same
way on every machine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import (
    BackendUnavailableError,
    ExportError,
    InvalidInputError,
    MissingExtraError,
    PrecisionError,
)
from ..runtime.backends import ShapeRange, Sidecar, engine_path, import_tensorrt, sidecar_path, trt_logger
from ..runtime.cuda import DeviceInfo, cuda
from ..runtime.gpu_plan import MB
from ..runtime.manifest import PRECISIONS, GraphInfo, Manifest, VoiceManifest, read_manifest
from ..runtime.placement import HostFacts, PlacementRequest, plan_placement
from ..runtime.precision import passed_variant
from ..runtime.synthesizer import StreamOptions
from ..utils import write_atomic
from .profiles import derive_profile, vocoder_axes

log = logging.getLogger(__name__)

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineOptions:
    """What ``sambert-deploy engines`` builds. ``vocoder_chunk`` None: the chunk the runtime's memory tier
    picks on this GPU (the profile's ``opt``). ``max_frames``: also cover whole utterances this long."""

    precision: str = "fp16"
    voices: tuple[str, ...] = ()  # () = every voice
    timing_cache: Path | None = None  # default: BUNDLE/engines/timing-sm<cc>.cache (one per GPU architecture)
    workspace_mb: int = 1024
    optimization_level: int = 3  # TensorRT's default; 5 searches longer for faster kernels
    vocoder_chunk: int | None = None
    max_frames: int | None = None
    device: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise PrecisionError(f"precision '{self.precision}' is unknown; engines are built for "
                                 f"{', '.join(ENGINE_PRECISIONS)}")
        if self.precision == "bf16":
            raise PrecisionError("bf16 is an OpenVINO inference hint on the FP32 graph, not an ONNX a strongly typed "
                                 "engine can take; build --precision fp16 (or fp32)")
        if self.workspace_mb < 16:
            raise InvalidInputError(f"--workspace must be at least 16 MB, got {self.workspace_mb}", param="workspace")
        if not 0 <= self.optimization_level <= 5:
            raise InvalidInputError(f"--optimization-level must be 0..5, got {self.optimization_level}",
                                    param="optimization_level")


@dataclass(frozen=True)
class EngineJob:
    """One engine to build: checked inputs, derived profile, where it goes."""

    voice: str
    precision: str
    onnx: Path
    graph: GraphInfo
    profile: dict[str, ShapeRange]
    engine: Path


@dataclass
class BuiltEngine:
    job: EngineJob
    sidecar: Sidecar
    seconds: float
    size: int
    notes: list[str] = field(default_factory=list)


def plan_jobs(manifest: Manifest, options: EngineOptions, stream: StreamOptions) -> list[EngineJob]:
    """The engines ``options`` asks for, every input checked (no TensorRT or GPU needed)."""
    return _jobs(manifest, _checked_graphs(manifest, options), options, stream)


def _checked_graphs(manifest: Manifest, options: EngineOptions) -> list[tuple[VoiceManifest, GraphInfo]]:
    """Each asked voice with the graph its engine is built from: voice, variant and INT8 kind checked."""
    graphs = []
    for name in options.voices or tuple(manifest.voices):
        if name not in manifest.voices:
            raise InvalidInputError(f"unknown voice '{name}'; this bundle has: {', '.join(manifest.voices)}",
                                    param="voice")
        vm = manifest.voices[name]
        graph = vm.graphs["vocoder"] if options.precision == "fp32" else passed_variant(vm, options.precision).graph
        if options.precision == "int8":
            check_int8_for_tensorrt(manifest.root / vm.folder / graph.file, vm)
        graphs.append((vm, graph))
    return graphs


def _jobs(manifest: Manifest, graphs: list[tuple[VoiceManifest, GraphInfo]], options: EngineOptions,
          stream: StreamOptions) -> list[EngineJob]:
    return [EngineJob(vm.name, options.precision, manifest.root / vm.folder / graph.file, graph,
                      derive_profile(graph, vocoder_axes(vm, stream, options.max_frames)),
                      engine_path(manifest.root, vm.name, graph.file)) for vm, graph in graphs]


def check_int8_for_tensorrt(onnx_path: Path, voice: VoiceManifest) -> None:
    """TensorRT's explicit quantization takes symmetric int8 Q/DQ only (zero point 0); ONNX Runtime's
    default static quantization writes uint8 activations with a zero point."""
    recipe = voice.variants["int8"].recipe
    if recipe.get("activations") == "int8 symmetric":
        return
    try:
        import onnx
    except ImportError:
        raise MissingExtraError("onnx", "quantize") from None

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None and zp.data_type == onnx.TensorProto.UINT8:
                raise PrecisionError(f"voice '{voice.name}': its int8 vocoder quantizes activations to uint8 with a "
                                     "zero point, which TensorRT cannot build; rebuild it symmetric: sambert-deploy "
                                     "quantize BUNDLE --precision int8 --int8-symmetric")


def stream_options_for(device: DeviceInfo, manifest: Manifest, options: EngineOptions) -> StreamOptions:
    """The chunking the runtime will use on this GPU (its memory tier), or the one asked for."""
    if options.vocoder_chunk is not None:
        return StreamOptions(vocoder_chunk=options.vocoder_chunk)
    # The runtime's own placement on this GPU, sized over the voices built (the tier a Synthesizer loading
    # them picks): TensorRT listed, the device's free memory as it is now.
    request = PlacementRequest(backend="tensorrt")
    host = HostFacts(("tensorrt", "cuda", "cpu"), cpus=1, gpu=device)
    placement = plan_placement(manifest, request, host, options.voices or None)
    if placement.gpu is not None:
        log.info("profile tuned for %s", placement.gpu.describe())
    return placement.options


def build_engines(bundle: str | Path, options: EngineOptions | None = None) -> list[BuiltEngine]:
    """Build the engines ``options`` asks for into ``BUNDLE/engines/<voice>/``, each with its sidecar.

    Order of failure: input mistakes first (precision, voice, variant), then TensorRT missing, then no
    GPU; each a one-line error naming the fix.
    """
    o = options or EngineOptions()
    manifest = read_manifest(bundle)
    graphs = _checked_graphs(manifest, o)
    import_tensorrt()  # one line naming the install where it is missing (or only its stubs are)
    try:
        device = cuda().device(o.device)
    except BackendUnavailableError as e:
        raise BackendUnavailableError(f"no CUDA GPU to build TensorRT engines on ({e}); build on the machine that "
                                      "will run them (engines are tied to the GPU model)") from None
    jobs = _jobs(manifest, graphs, o, stream_options_for(device, manifest, o))
    # Per compute capability: a cache measured on one GPU architecture is refused by another, and builds
    # alternating between two GPUs would otherwise overwrite each other's.
    cache_file = o.timing_cache or manifest.root / "engines" / f"timing-sm{device.compute_capability.replace('.', '')}.cache"
    built = []
    for job in jobs:
        built.append(_build_one(job, o, device, cache_file))
    return built


def _build_one(job: EngineJob, o: EngineOptions, device: DeviceInfo, cache_file: Path) -> BuiltEngine:
    import tensorrt  # typed by tensorrt-stubs under mypy

    logger = trt_logger(tensorrt)
    builder = tensorrt.Builder(logger)
    # TensorRT 10: strongly typed on request; 11: always (the flag is kept and ignored; 0 if a later
    # release drops it).
    strongly_typed = getattr(tensorrt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = tensorrt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(job.onnx)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {tensorrt.__version__} could not parse {job.onnx.name}: {errors}; re-export "
                          "the bundle or report the operator")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(tensorrt.MemoryPoolType.WORKSPACE, o.workspace_mb * MB)
    config.builder_optimization_level = o.optimization_level
    profile = builder.create_optimization_profile()
    for name, rng in job.profile.items():
        profile.set_shape(name, tensorrt.Dims(list(rng.min)), tensorrt.Dims(list(rng.opt)), tensorrt.Dims(list(rng.max)))
    config.add_optimization_profile(profile)
    cache_bytes = cache_file.read_bytes() if cache_file.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    # ignore_mismatch=False: a cache from another GPU or TensorRT is refused, not silently used.
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s does not match this GPU/TensorRT; building without it", cache_file)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    builder_info = {"strongly_typed": True, "workspace_mb": o.workspace_mb,
                    "optimization_level": o.optimization_level, "timing_cache": str(cache_file),
                    "timing_cache_bytes_in": len(cache_bytes),
                    "profile": {k: [list(v.min), list(v.opt), list(v.max)] for k, v in job.profile.items()}}
    log.info("TensorRT %s builder for %s/%s (%s) on %s sm_%s: %s", tensorrt.__version__, job.voice, job.onnx.name,
             job.precision, device.name, device.compute_capability.replace(".", ""), builder_info)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise ExportError(f"TensorRT {tensorrt.__version__} failed to build {job.onnx.name} ({job.precision}); its log "
                          "above says why (raise --workspace if it ran out of memory)")
    data = bytes(memoryview(plan))
    sc = Sidecar(job.voice, job.graph.name, job.precision, job.graph.file, job.graph.sha256, tensorrt.__version__,
                 device.name, device.compute_capability, job.profile, builder_info)
    _write_atomic(job.engine, data)
    sc.write(sidecar_path(job.engine))
    _write_atomic(cache_file, bytes(memoryview(config.get_timing_cache().serialize())))
    log.info("%s: %.1f MB in %.1f s", job.engine, len(data) / MB, seconds)
    return BuiltEngine(job, sc, seconds, len(data))


def _write_atomic(path: Path, data: bytes) -> None:
    """A user's previous engine (or cache) stays whole if the build is interrupted (utils.write_atomic:
    a temp file beside it, flushed, renamed into place; the temp file keeps the umask's permissions, so
    a service running as another user can read the engine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def describe(built: list[BuiltEngine]) -> list[str]:
    return [f"{b.job.voice} {b.job.precision}: {b.job.engine} ({b.size / MB:.1f} MB, {b.seconds:.1f} s; profile "
            f"{ {k: [list(v.min), list(v.opt), list(v.max)] for k, v in b.job.profile.items()} })" for b in built]

