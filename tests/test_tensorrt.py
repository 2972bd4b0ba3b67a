"""TensorRT path on the CPU: profile derivation, sidecar refusal (each field), the fallback order with
providers that are listed but fail to open, the memory tiers, the CUDA layer's return-code checks, the
`engines` command's input errors, and the TensorRT backend's data flow against a stand-in TensorRT
whose "engine" is the ONNX graph run by ONNX Runtime (so streamed audio must equal the CPU's).

The `trt`-marked test at the end builds and runs a real engine where TensorRT and a GPU exist.
"""

from __future__ import annotations

import json
import shutil
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from sambert_deploy.cli import main
from sambert_deploy.engines.profiles import AxisRange, derive_profile, vocoder_axes, window_frames
from sambert_deploy.errors import (
    BackendUnavailableError,
    BundleError,
    CudaError,
    EngineMismatchError,
    InvalidInputError,
    PrecisionError,
)
from sambert_deploy.runtime import backends
from sambert_deploy.runtime.backends import (
    EngineTarget,
    Host,
    ShapeRange,
    Sidecar,
    check_sidecar,
    engine_path,
    read_sidecar,
    sidecar_path,
)
from sambert_deploy.runtime.backends import select as backend_select
from sambert_deploy.runtime.backends import tensorrt as trt_backend
from sambert_deploy.runtime.cuda import Cuda, DeviceInfo
from sambert_deploy.runtime.gpu_plan import GB, MB, parse_bytes, plan_gpu
from sambert_deploy.runtime.manifest import read_manifest
from sambert_deploy.runtime.synthesizer import StreamOptions, Synthesizer

from .conftest import need_module
from .test_precision import force_verdict
from .test_runtime import symbol_units

SMALL = StreamOptions(postnet_chunk=6, vocoder_chunk=8, first_chunk=3)
GPU = DeviceInfo(0, "NVIDIA Fake 80GB", "9.0", 80 * GB, 80 * GB)


# -- profiles ---------------------------------------------------------------------------------------
def test_profile_from_graph_spec_and_chunk_sizes(tiny_bundles: dict[str, Path]) -> None:
    m = read_manifest(tiny_bundles["causal"])
    vm = m.voice(None)
    mels, ctx = vm.vocoder.in_channels, vm.vocoder.context_left
    prof = derive_profile(vm.graphs["vocoder"], vocoder_axes(vm, SMALL))
    window = SMALL.vocoder_chunk + ctx
    assert window_frames(vm, SMALL) == window
    # Tuned for the stream's window; covering the largest memory tier's window (512 + context) too, as the
    # runtime's tier depends on the memory free when it starts.
    assert prof == {"mel": ShapeRange((1, mels, 1), (1, mels, window), (1, mels, 512 + ctx))}
    # Whole utterances up to --max-frames; opt stays at the streaming window.
    longer = derive_profile(vm.graphs["vocoder"], vocoder_axes(vm, SMALL, max_frames=2000))
    assert longer["mel"].opt == (1, mels, window) and longer["mel"].max == (1, mels, 2000)
    # The non-causal vocoder's window has right context too.
    nvm = read_manifest(tiny_bundles["noncausal"]).voice(None)
    n = derive_profile(nvm.graphs["vocoder"], vocoder_axes(nvm, SMALL))["mel"]
    assert n.opt[2] == SMALL.vocoder_chunk + nvm.vocoder.context_left + nvm.vocoder.context_right


def test_profile_refuses_an_axis_without_a_range(tiny_bundles: dict[str, Path]) -> None:
    vm = read_manifest(tiny_bundles["causal"]).voice(None)
    with pytest.raises(InvalidInputError, match=r"\('num_frames'\) has no range"):
        derive_profile(vm.graphs["vocoder"], {"batch": AxisRange(1, 1, 1), "num_mels": AxisRange(80, 80, 80)})
    with pytest.raises(InvalidInputError, match="min <= opt <= max"):
        AxisRange(10, 5, 20)


# -- sidecar ----------------------------------------------------------------------------------------
def _sidecar(**kw: Any) -> Sidecar:
    base = dict(voice="v", graph="vocoder", precision="fp16", onnx="vocoder.fp16.onnx", onnx_sha256="ab" * 32,
                tensorrt="10.13.0.35", gpu="NVIDIA H200", compute_capability="9.0",
                profiles={"mel": ShapeRange((1, 80, 1), (1, 80, 291), (1, 80, 291))})
    base.update(kw)
    return Sidecar(**base)  # type: ignore[arg-type]


HERE_NOW = Host("10.13.0.35", "NVIDIA H200", "9.0")
WANT = EngineTarget("fp16", "ab" * 32, {"mel": ((1, 80, 1), (1, 80, 291))})


def test_sidecar_round_trips_and_matches() -> None:
    sc = _sidecar()
    assert Sidecar.from_json(json.loads(json.dumps(sc.to_json()))) == sc
    check_sidecar(sc, WANT, HERE_NOW, Path("vocoder.fp16.plan"))


@pytest.mark.parametrize(("field", "value", "words"), [
    ("tensorrt", "11.4.0.106", "TensorRT version 11.4.0.106"),
    ("compute_capability", "8.9", "compute capability 8.9"),
    ("gpu", "NVIDIA L4", "GPU NVIDIA L4"),
    ("precision", "fp32", "precision fp32"),
    ("onnx_sha256", "cd" * 32, "ONNX graph sha256 cdcdcd"),
    ("profiles", {"mel": ShapeRange((1, 80, 1), (1, 80, 128), (1, 80, 163))}, "covers [1, 80, 1]..[1, 80, 163]"),
    ("profiles", {"audio": ShapeRange((1,), (1,), (1,))}, "no profile for input 'mel'"),
    ("format", 99, "sidecar format 99"),
])
def test_sidecar_mismatch_is_refused_naming_field_and_rebuild(field: str, value: Any, words: str) -> None:
    with pytest.raises(EngineMismatchError, match="rebuild it") as e:
        check_sidecar(_sidecar(**{field: value}), WANT, HERE_NOW, Path("vocoder.fp16.plan"))
    assert words in str(e.value) and "sambert-deploy engines BUNDLE --voice v --precision fp16" in str(e.value)


def test_missing_or_damaged_sidecar(tmp_path: Path) -> None:
    plan = tmp_path / "vocoder.plan"
    with pytest.raises(BundleError, match="no TensorRT engine .* build it: sambert-deploy engines"):
        read_sidecar(plan)
    plan.write_bytes(b"x")
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(BundleError, match="not a readable engine sidecar"):
        read_sidecar(plan)


# -- memory tiers -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("gb", "tier", "chunk", "streams"), [
    (4, "edge", 128, 2), (8, "desktop", 256, 4), (16, "workstation", 256, 8), (80, "datacenter", 512, 16),
])
def test_memory_tier_for_free_memory(gb: int, tier: str, chunk: int, streams: int) -> None:
    plan = plan_gpu(gb * GB, 67 * MB, hop=200)
    assert (plan.tier, plan.vocoder_chunk, plan.gpu_streams, plan.vocoder_on_gpu) == (tier, chunk, streams, True)
    assert plan.estimate <= plan.budget <= gb * GB
    assert tier in plan.describe()


def test_memory_budget_caps_the_tier_and_offloads_the_vocoder() -> None:
    capped = plan_gpu(80 * GB, 67 * MB, hop=200, max_gpu_memory=4 * GB)
    assert capped.tier == "edge" and capped.budget == 4 * GB and "--max-gpu-memory" in capped.reason
    small = plan_gpu(80 * GB, 67 * MB, hop=200, max_gpu_memory=parse_bytes("1.5G"))
    assert small.tier == "cpu-offload" and not small.vocoder_on_gpu
    # A budget above what is free does not raise the plan.
    assert plan_gpu(4 * GB, 67 * MB, hop=200, max_gpu_memory=80 * GB).tier == "edge"


def test_parse_bytes() -> None:
    assert parse_bytes("4G") == 4 * GB and parse_bytes("512M") == 512 * MB and parse_bytes("2.5GB") == int(2.5 * GB)
    assert parse_bytes(1024) == 1024 and parse_bytes(None) is None
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(InvalidInputError, match="max_gpu_memory"):
            parse_bytes(bad)


# -- the CUDA layer -----------------------------------------------------------------------------------
class _FakeCudart:
    """cudart functions as Python callables: each returns its scripted code; outputs written through byref."""

    def __init__(self, codes: dict[str, int]):
        self.codes = codes

    def __getattr__(self, name: str) -> Any:
        def fn(*args: Any) -> Any:
            if name == "cudaGetErrorName":
                return b"cudaErrorMemoryAllocation" if args[0] == 2 else b"cudaErrorUnknown"
            if name == "cudaGetErrorString":
                return b"out of memory" if args[0] == 2 else b"unknown error"
            if name == "cudaMemGetInfo":
                args[0]._obj.value, args[1]._obj.value = 3 * GB, 8 * GB
            if name == "cudaGetDeviceCount":
                args[0]._obj.value = 1
            if name == "cudaMalloc":
                args[0]._obj.value = 0x1000
            return self.codes.get(name, 0)
        fn.restype = None  # type: ignore[attr-defined]
        return fn


def test_cuda_calls_are_checked() -> None:
    ok = Cuda(runtime=_FakeCudart({}))
    assert ok.mem_info(0) == (3 * GB, 8 * GB) and ok.device_count() == 1 and ok.malloc(10) == 0x1000
    oom = Cuda(runtime=_FakeCudart({"cudaMalloc": 2}))
    with pytest.raises(CudaError, match=r"cudaMalloc\(4096 bytes\) failed: cudaErrorMemoryAllocation \(2\): out of "
                                        r"memory; lower --max-gpu-memory"):
        oom.malloc(4096)
    broken = Cuda(runtime=_FakeCudart({"cudaMemcpyAsync": 700}))
    with pytest.raises(CudaError, match="cudaMemcpyAsync\\(host to device\\) failed: cudaErrorUnknown \\(700\\)"):
        broken.to_device(0x1000, np.zeros(4, np.float32), 0)
    nodev = Cuda(runtime=_FakeCudart({"cudaGetDeviceCount": 100}))
    with pytest.raises(CudaError, match="no usable NVIDIA GPU"):
        nodev.device(0)
    assert isinstance(CudaError("x"), BackendUnavailableError)  # the runtime falls back on it


# -- the engines command's input errors ---------------------------------------------------------------
def _engines(bundle: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["engines", str(bundle), *args])


def test_engines_bad_input_is_one_line_naming_the_fix(tiny_bundles: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    b = tiny_bundles["causal"]
    cases = [
        (["--precision", "fp8"], "precision 'fp8' is unknown"),
        (["--precision", "bf16"], "build --precision fp16"),
        (["--precision", "fp16"], "has no fp16 vocoder (variants built: none); build it with: sambert-deploy quantize"),
        (["--voice", "nobody"], "unknown voice 'nobody'"),
        (["--precision", "fp32"], "TensorRT is not installed"),
    ]
    for args, words in cases:
        r = _engines(b, *args)
        assert r.exit_code == 2, r.output
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.output
    # TensorRT importable but no GPU.
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: types.SimpleNamespace())
    from sambert_deploy.engines import build

    monkeypatch.setattr(build, "import_tensorrt", lambda: types.SimpleNamespace())

    def no_gpu() -> Any:
        raise BackendUnavailableError("the CUDA runtime library (libcudart) was not found")

    monkeypatch.setattr(build, "cuda", no_gpu)
    r = _engines(b, "--precision", "fp32")
    assert r.exit_code == 2 and "no CUDA GPU to build TensorRT engines on" in r.output, r.output


def test_engines_refuses_asymmetric_int8(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    need_module("onnxconverter_common", "the quantize extra (pip install -e '.[quantize]')")
    from sambert_deploy.calibration.bundle import QuantizeOptions, quantize_bundle

    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundles["causal"], b)
    quantize_bundle(b, QuantizeOptions(precisions=("int8",), reference=False))
    force_verdict(b, "int8", True)  # the real-vocoder check did not run here: not a pass unless forced
    r = _engines(b, "--precision", "int8")
    assert r.exit_code == 2 and "--int8-symmetric" in r.output, r.output
    # Symmetric activations: every zero point int8 (0), and the engine job passes its checks.
    import onnx

    from sambert_deploy.calibration.precision import DEFAULT_INT8
    from sambert_deploy.engines.build import EngineOptions, plan_jobs

    quantize_bundle(b, QuantizeOptions(precisions=("int8",), reference=False,
                                       recipe=replace(DEFAULT_INT8, symmetric=True)))
    force_verdict(b, "int8", True)
    m = read_manifest(b)
    var = m.voice(None).variants["int8"]
    assert var.recipe["activations"] == "int8 symmetric"
    model = onnx.load(str(b / m.voice(None).folder / var.graph.file))
    inits = {t.name: t for t in model.graph.initializer}
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.data_type == onnx.TensorProto.INT8 and not onnx.numpy_helper.to_array(z).any() for z in zps)
    jobs = plan_jobs(m, EngineOptions(precision="int8"), SMALL)
    assert [j.engine.name for j in jobs] == ["vocoder.int8.plan"]


# -- a stand-in TensorRT: the "engine" is the ONNX graph on ONNX Runtime, memory is host memory ------
class _HostCuda:
    """The CUDA layer's interface over host memory: pointers are keys of a dict of byte arrays."""

    def __init__(self) -> None:
        self.mem: dict[int, bytearray] = {}
        self.next = 0x10
        self.freed = 0

    def device(self, index: int = 0) -> DeviceInfo:
        return GPU

    def set_device(self, index: int) -> None:
        assert index == 0

    def device_count(self) -> int:
        return 1

    def malloc(self, n: int) -> int:
        self.next += 0x10
        self.mem[self.next] = bytearray(n)
        return self.next

    def free(self, ptr: int) -> None:
        if ptr:
            del self.mem[ptr]
            self.freed += 1

    def stream_create(self) -> int:
        return 1

    def stream_destroy(self, stream: int) -> None:
        pass

    def synchronize(self, stream: int) -> None:
        pass

    def to_device(self, dst: int, src: np.ndarray, stream: int) -> None:
        b = np.ascontiguousarray(src).tobytes()
        self.mem[dst][:len(b)] = b

    def to_host(self, dst: np.ndarray, src: int, stream: int) -> None:
        dst.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(self.mem[src][:dst.nbytes]), np.uint8)


class _FakeContext:
    def __init__(self, engine: _FakeEngine):
        self.engine, self.shapes, self.addr = engine, {}, {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        frames = self.shapes["mel"][2]
        return (1, 1, frames * self.engine.hop)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        cu = self.engine.cu
        shape = self.shapes["mel"]
        mel = np.frombuffer(bytes(cu.mem[self.addr["mel"]][:int(np.prod(shape)) * 4]), np.float32).reshape(shape)
        audio = self.engine.session.run(None, {"mel": mel})[0].astype(np.float32)
        cu.to_device(self.addr["audio"], audio, stream)
        self.engine.calls += 1
        return True


class _FakeEngine:
    num_io_tensors = 2
    device_memory_size_v2 = 8 << 20

    def __init__(self, onnx: Path, cu: _HostCuda, hop: int, mels: int):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        self.cu, self.hop, self.mels, self.calls = cu, hop, mels, 0

    def get_tensor_name(self, i: int) -> str:
        return ("mel", "audio")[i]

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name == "mel" else "out"

    def get_tensor_dtype(self, name: str) -> str:
        return "f32"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (1, self.mels, -1) if name == "mel" else (1, 1, -1)

    def create_execution_context(self) -> _FakeContext:
        return _FakeContext(self)


def _fake_tensorrt(cu: _HostCuda, root: Path, hop: int, mels: int) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0.35"  # type: ignore[attr-defined]
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in")  # type: ignore[attr-defined]
    trt.nptype = lambda dtype: np.float32  # type: ignore[attr-defined]
    engines: list[_FakeEngine] = []

    class Runtime:
        def __init__(self, logger: Any):
            pass

        def deserialize_cuda_engine(self, data: bytes) -> _FakeEngine:
            engines.append(_FakeEngine(root / data.decode(), cu, hop, mels))
            return engines[-1]

    trt.Runtime = Runtime  # type: ignore[attr-defined]
    trt.engines = engines  # type: ignore[attr-defined]
    _fake_builder_api(trt, root)
    return trt


def _fake_builder_api(trt: types.ModuleType, root: Path) -> None:
    """The builder side, recording what it is asked: the "engine" it builds is the parsed ONNX's path
    (which the stand-in runtime above runs), the timing cache grows a line per build."""
    calls: dict[str, Any] = {"flags": [], "profiles": [], "caches_in": [], "ignore_mismatch": [], "workspace": []}
    trt.build_calls = calls  # type: ignore[attr-defined]
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)  # type: ignore[attr-defined]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")  # type: ignore[attr-defined]
    trt.Dims = tuple  # type: ignore[attr-defined]

    class Cache:
        def __init__(self, data: bytes):
            self.data = data

        def serialize(self) -> bytes:
            return self.data

    class Config:
        builder_optimization_level = 3

        def __init__(self) -> None:
            self.cache = Cache(b"")

        def set_memory_pool_limit(self, pool: str, n: int) -> None:
            calls["workspace"].append(n)

        def add_optimization_profile(self, profile: Any) -> None:
            calls["profiles"].append(profile.shapes)

        def create_timing_cache(self, data: bytes) -> Cache:
            calls["caches_in"].append(bytes(data))
            return Cache(bytes(data))

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            calls["ignore_mismatch"].append(ignore_mismatch)
            self.cache = cache
            return True

        def get_timing_cache(self) -> Cache:
            return self.cache

    class Network:
        onnx: Path | None = None

    class Parser:
        num_errors = 0

        def __init__(self, network: Network, logger: Any):
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            self.network.onnx = Path(path)
            return True

    class Builder:
        def __init__(self, logger: Any):
            pass

        def create_network(self, flags: int) -> Network:
            calls["flags"].append(flags)
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Any:
            shapes: dict[str, Any] = {}
            return types.SimpleNamespace(shapes=shapes, set_shape=lambda n, lo, opt, hi: shapes.__setitem__(n, (lo, opt, hi)))

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            assert network.onnx is not None
            config.cache = Cache(config.cache.data + b"timed\n")
            return str(network.onnx.relative_to(root)).encode()

    trt.Builder, trt.OnnxParser = Builder, Parser  # type: ignore[attr-defined]


def _fake_engine_files(bundle: Path, voice: str, precision: str = "fp32") -> Path:
    m = read_manifest(bundle)
    vm = m.voice(voice)
    graph = vm.graphs["vocoder"]
    plan = engine_path(bundle, vm.name, graph.file)
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(f"{vm.folder}/{graph.file}".encode())  # the stand-in runtime "deserializes" the ONNX path
    prof = derive_profile(graph, vocoder_axes(vm, SMALL, max_frames=4096))
    Sidecar(vm.name, "vocoder", precision, graph.file, graph.sha256, "10.13.0.35", GPU.name, GPU.compute_capability,
            prof).write(sidecar_path(plan))
    return plan


def _listed(monkeypatch: pytest.MonkeyPatch, kinds: list[str]) -> None:
    """Backends this machine lists (not whether they open)."""
    from sambert_deploy.runtime import placement

    monkeypatch.setattr(backend_select, "available_backends", lambda: list(kinds))
    monkeypatch.setattr(placement, "available_backends", lambda: list(kinds))


@pytest.fixture
def fake_trt(tiny_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any]:
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundles["causal"], b)
    cu = _HostCuda()
    voc = read_manifest(b).voice(None).vocoder
    trt = _fake_tensorrt(cu, b, voc.hop, voc.in_channels)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "cuda", lambda: cu)
    _listed(monkeypatch, ["tensorrt", "cpu"])
    return b, trt


def test_tensorrt_backend_streams_what_the_cpu_streams(fake_trt: tuple[Path, Any]) -> None:
    b, trt = fake_trt
    _fake_engine_files(b, "tiny_emo")
    sym = symbol_units(60)
    with Synthesizer(b, backend="cpu", options=SMALL) as cpu:
        want = cpu.synthesize(symbols=sym)
    with Synthesizer(b, backend="tensorrt", strict=True, options=SMALL, gpu_streams=2) as syn:
        got = syn.synthesize(symbols=sym)
        assert syn.backends()[syn.default_voice] == ("cpu", "tensorrt")
        session = syn.sessions()["vocoder"]
        assert session.kind == "tensorrt" and session.contexts <= 2  # contexts bounded by gpu_streams
    assert trt.engines[0].calls > 3
    np.testing.assert_allclose(got, want, atol=1e-6)
    from sambert_deploy.runtime.placement import lane

    assert lane("tensorrt") == lane("cuda") == "cuda"  # GPU calls on the gpu_streams workers, not the CPU's
    # A precision TensorRT cannot run (bf16 is an OpenVINO hint) skips it under auto, and is an error when named.
    with Synthesizer(b, backend="auto", options=SMALL, precision="int8") as syn, \
            pytest.raises(PrecisionError, match="no int8 vocoder"):
        syn.load()
    with Synthesizer(b, backend="tensorrt", strict=True, options=SMALL, precision="bf16") as syn, \
            pytest.raises(PrecisionError, match="OpenVINO inference hint"):
        syn.load()


def test_engines_build_strongly_typed_with_profile_cache_and_sidecar(fake_trt: tuple[Path, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder on the stand-in TensorRT: strongly typed flag, the profile from the graph spec at the
    memory tier's chunk (80 GB: datacenter, 512), the timing cache reused and grown, engine and sidecar
    written; the engine then streams what the CPU streams."""
    from sambert_deploy.engines import build

    b, trt = fake_trt
    monkeypatch.setattr(build, "cuda", trt_backend.cuda)  # the stand-in device (80 GB free)
    monkeypatch.setattr(build, "import_tensorrt", lambda: trt)
    r = _engines(b, "--precision", "fp32")
    assert r.exit_code == 0, r.output
    vm = read_manifest(b).voice(None)
    window = 512 + vm.vocoder.context_left
    mels = vm.vocoder.in_channels
    calls = trt.build_calls
    assert calls["flags"] == [1 << 1] and calls["ignore_mismatch"] == [False]  # 1 << STRONGLY_TYPED (1 here)
    assert calls["profiles"] == [{"mel": ((1, mels, 1), (1, mels, window), (1, mels, window))}]  # 512: the top tier
    assert calls["workspace"] == [1024 * MB]
    plan = engine_path(b, vm.name, "vocoder.onnx")
    sc = read_sidecar(plan)
    assert (sc.precision, sc.gpu, sc.compute_capability, sc.tensorrt) == ("fp32", GPU.name, "9.0", "10.13.0.35")
    assert sc.onnx_sha256 == vm.graphs["vocoder"].sha256 and sc.builder["strongly_typed"] is True
    cache = b / "engines" / "timing-sm90.cache"
    assert cache.read_bytes() == b"timed\n"
    assert _engines(b, "--precision", "fp32").exit_code == 0  # rebuild: the cache is read back and grows
    assert calls["caches_in"][-1] == b"timed\n" and cache.read_bytes() == b"timed\ntimed\n"
    assert not list(plan.parent.glob("*.tmp"))
    sym = symbol_units(40)
    with Synthesizer(b, backend="cpu", options=SMALL) as cpu, \
            Synthesizer(b, backend="tensorrt", strict=True, options=SMALL) as gpu:
        np.testing.assert_allclose(gpu.synthesize(symbols=sym), cpu.synthesize(symbols=sym), atol=1e-6)
    info = CliRunner().invoke(main, ["info", str(b)])
    assert "TensorRT engine vocoder.plan (fp32, TensorRT 10.13.0.35" in info.output and "loads here" in info.output


def test_tensorrt_backend_refuses_a_mismatched_engine_and_auto_falls_back(fake_trt: tuple[Path, Any],
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    b, trt = fake_trt
    plan = _fake_engine_files(b, "tiny_emo")
    sc = read_sidecar(plan)
    Sidecar(**{**sc.__dict__, "compute_capability": "8.6"}).write(sidecar_path(plan))
    with Synthesizer(b, backend="tensorrt", strict=True, options=SMALL) as syn, \
            pytest.raises(EngineMismatchError, match="compute capability 8.6.*rebuild it: sambert-deploy engines"):
        syn.load()
    with Synthesizer(b, backend="auto", options=SMALL) as syn:
        assert syn.synthesize(symbols=symbol_units(10)).size
        assert syn.backends()[syn.default_voice][1] == "cpu"
    assert "vocoder not on tensorrt" in caplog.text and "compute capability 8.6" in caplog.text


def test_profile_outside_the_engine_is_a_clear_error(fake_trt: tuple[Path, Any]) -> None:
    b, _ = fake_trt
    plan = _fake_engine_files(b, "tiny_emo")
    be = trt_backend.TensorRTBackend(plan).open()
    with pytest.raises(InvalidInputError, match="outside the engine's profile .* --max-frames"):
        be.run({"mel": np.zeros((1, be.inputs["mel"].shape[1] or 0, 5000), np.float32)})
    be.close()


def test_fallback_order_with_listed_providers_that_fail_to_open(tiny_bundles: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """TensorRT listed (no engine for this voice), CUDA EP listed (no driver), OpenVINO listed (fails to
    compile): the vocoder ends on the CPU EP, each step logged with its reason, in that order."""
    def refuse(what: str) -> Any:
        def open_(self: Any) -> Any:  # what the runtime calls to open a backend: it fails
            raise BackendUnavailableError(f"{what} cannot start here")
        return open_

    _listed(monkeypatch, ["tensorrt", "cuda", "openvino", "cpu"])
    monkeypatch.setattr(backends.OrtCudaBackend, "open", refuse("CUDA EP"))
    monkeypatch.setattr(backends.OpenVinoBackend, "open", refuse("OpenVINO"))
    with Synthesizer(tiny_bundles["causal"], backend="auto", options=SMALL, precision="fp32") as syn:
        assert (syn.placement.am_backend, syn.placement.voc_backend) == ("cuda", "tensorrt")
        assert syn.synthesize(symbols=symbol_units(8)).size
        assert syn.backends()[syn.default_voice] == ("cpu", "cpu")
    text = caplog.text
    steps = ["vocoder not on tensorrt", "no TensorRT engine", "falling back to cuda", "vocoder not on cuda",
             "falling back to openvino", "vocoder not on openvino", "falling back to cpu"]
    pos = text.find("vocoder not on")
    for step in steps:  # each after the one before
        pos = text.find(step, pos)
        assert pos >= 0, (step, text)
    assert "acoustic model not on cuda: CUDA EP cannot start here; falling back to cpu" in text
    with pytest.raises(InvalidInputError, match="TensorRT runs the vocoder only"):
        Synthesizer(tiny_bundles["causal"], am_backend="tensorrt")


# -- real TensorRT ------------------------------------------------------------------------------------
@pytest.mark.trt
@pytest.mark.skipif(trt_backend.tensorrt_missing() is not None, reason="needs TensorRT and a CUDA GPU")
def test_real_engine_matches_cpu(tiny_bundles: dict[str, Path], tmp_path: Path) -> None:
    from sambert_deploy.engines.build import EngineOptions, build_engines

    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundles["causal"], b)
    built = build_engines(b, EngineOptions(precision="fp32", vocoder_chunk=SMALL.vocoder_chunk))
    assert built and built[0].job.engine.is_file()
    sym = symbol_units(60)
    with Synthesizer(b, backend="cpu", options=SMALL) as cpu, \
            Synthesizer(b, backend="tensorrt", strict=True, options=SMALL) as gpu:
        a, g = cpu.synthesize(symbols=sym), gpu.synthesize(symbols=sym)
    assert a.shape == g.shape and float(np.abs(a - g).max()) < 1e-4


def test_engine_named_by_precision_whatever_the_variant_file() -> None:
    """A re-quantized variant's content-addressed file keeps its precision's engine name, so an engine
    built from the replaced file is found (and refused by its sidecar) rather than silently ignored."""
    from sambert_deploy.runtime.backends.sidecar import engine_path

    names = {f: engine_path("B", "v", f).name for f in
             ("vocoder.onnx", "vocoder.fp16.onnx", "vocoder.int8.onnx", "vocoder.int8.2ec9e0923db119b7.onnx")}
    assert names == {"vocoder.onnx": "vocoder.plan", "vocoder.fp16.onnx": "vocoder.fp16.plan",
                     "vocoder.int8.onnx": "vocoder.int8.plan", "vocoder.int8.2ec9e0923db119b7.onnx": "vocoder.int8.plan"}
