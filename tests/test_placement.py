"""One placement: the pure plan (fake host facts) and what `info`, `Synthesizer.backends()` and `/health`
report once it is opened, which must be one and the same thing for every voice."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sambert_deploy.cli import main
from sambert_deploy.errors import BackendUnavailableError, InvalidInputError
from sambert_deploy.runtime import backends, placement
from sambert_deploy.runtime.cuda import DeviceInfo
from sambert_deploy.runtime.gpu_plan import GB, RESERVE_BYTES
from sambert_deploy.runtime.manifest import read_manifest
from sambert_deploy.runtime.placement import HostFacts, PlacementRequest, StreamOptions, plan_placement
from sambert_deploy.runtime.synthesizer import Synthesizer

from .conftest import need_module
from .test_service import two_voices  # noqa: F401 - the two-voice bundle fixture

GPU_HOST = HostFacts(("cuda", "cpu"), cpus=2, gpu=DeviceInfo(0, "Fake GPU", "8.9", 16 * GB, 24 * GB))


def test_two_voices_are_planned_within_the_budget_together(two_voices: Path) -> None:  # noqa: F811
    m = read_manifest(two_voices)
    request = PlacementRequest(backend="cuda", max_gpu_memory=4 * GB)
    both = plan_placement(m, request, GPU_HOST)
    one = plan_placement(m, request, GPU_HOST, voices=["zhibei_emo"])
    assert list(both.voices) == ["zhibei_emo", "zhiyan_emo"] and list(one.voices) == ["zhibei_emo"]
    assert both.gpu is not None and one.gpu is not None
    assert both.gpu.budget == 4 * GB and both.gpu.estimate <= 4 * GB
    weights = [sum((m.root / vm.folder / g.file).stat().st_size for g in vm.graphs.values()) for vm in m.voices.values()]
    # the estimate counts both voices' weights (the calls in flight are shared)
    assert both.gpu.estimate - one.gpu.estimate == weights[1]
    sessions = sum(len(vm.graphs) for vm in m.voices.values())
    cap = both.backend_options.gpu_mem_limit
    assert cap is not None and cap == (4 * GB - RESERVE_BYTES) // sessions
    assert cap * sessions + RESERVE_BYTES <= 4 * GB  # every arena of both voices at its cap still fits
    assert one.backend_options.gpu_mem_limit == (4 * GB - RESERVE_BYTES) // (sessions // 2)


def test_the_plan_is_pure_and_follows_the_request(tiny_bundles: dict[str, Path]) -> None:
    m = read_manifest(tiny_bundles["causal"])
    cpu = HostFacts(("openvino", "cpu"), {"cuda": "no CUDA here", "tensorrt": "no TensorRT"}, cpus=3)
    a = plan_placement(m, PlacementRequest(), cpu)
    assert a == plan_placement(m, PlacementRequest(), cpu)
    vp = a.voice(m.default_voice)
    assert (a.am_backend, a.voc_backend) == ("cpu", "openvino") and a.gpu is None
    assert vp.am_chain == ("cpu",) and [c.backend for c in vp.vocoder_chain] == ["openvino", "cpu"]
    assert a.cpu_budget == 3 and a.max_ahead == 5 and a.options == StreamOptions()
    assert a.backend_options.gpu_mem_limit is None  # no budget asked: ORT's arenas as they always were
    cuda = plan_placement(m, PlacementRequest(backend="cuda"), cpu)  # asked for, absent: falls back, said why
    assert cuda.am_backend == "cpu" and any("no CUDA here" in n for n in cuda.notes)
    with pytest.raises(BackendUnavailableError, match="no CUDA here"):
        plan_placement(m, PlacementRequest(backend="cuda", strict=True), cpu)
    with pytest.raises(InvalidInputError, match="unknown voice 'nope'"):
        plan_placement(m, PlacementRequest(), cpu, voices=["nope"])
    with pytest.raises(InvalidInputError, match="TensorRT runs the vocoder only"):
        PlacementRequest(am_backend="tensorrt")
    gpu = plan_placement(m, PlacementRequest(backend="cuda"), GPU_HOST)  # the tier decides the chunking
    assert gpu.gpu is not None and gpu.options.vocoder_chunk == gpu.gpu.vocoder_chunk
    assert gpu.gpu_streams == gpu.gpu.gpu_streams


def _info_lines(bundle: Path) -> dict[str, tuple[str, str, str]]:
    r = CliRunner().invoke(main, ["-q", "info", str(bundle)])
    assert r.exit_code == 0, r.output
    found: dict[str, tuple[str, str, str]] = {}
    voice = ""
    for line in r.output.splitlines():
        if m := re.match(r"\s+voice (\S+):", line):
            voice = m.group(1)
        if m := re.search(r"auto runs the acoustic model on (\S+) \(fp32\) and the vocoder on (\S+) \((\S+)\)", line):
            found[voice] = (m.group(1), m.group(2), m.group(3))
    return found


def test_info_backends_and_health_agree_under_forced_fallbacks(two_voices: Path,  # noqa: F811
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA EP and OpenVINO listed, neither opens: every report says what really runs (the CPU EP)."""
    need_module("fastapi", "the serve extra (pip install '.[serve]')")
    from fastapi.testclient import TestClient

    from sambert_deploy.serve.app import ServeConfig, create_app

    def refuse(what: str) -> Any:
        def open_(self: Any) -> Any:  # what the runtime calls to open a backend: it fails
            raise BackendUnavailableError(f"{what} cannot start here")
        return open_

    monkeypatch.setattr(placement, "available_backends", lambda: ["cuda", "openvino", "cpu"])
    monkeypatch.setattr(backends.OrtCudaBackend, "open", refuse("CUDA EP"))
    monkeypatch.setattr(backends.OpenVinoBackend, "open", refuse("OpenVINO"))
    info = _info_lines(two_voices)
    with Synthesizer(two_voices, options=StreamOptions(vocoder_chunk=8, postnet_chunk=8)) as syn:
        assert syn.placement.am_backend == "cuda"  # planned; what opened is below
        syn.load("*", text=False)
        ours = {v: (am, voc, syn.precisions()[v]) for v, (am, voc) in syn.backends().items()}
        with TestClient(create_app(syn, ServeConfig())) as client:
            health = client.get("/health").json()
        opened = syn.opened()
    assert set(info) == set(ours) == {"zhibei_emo", "zhiyan_emo"}
    assert info == ours
    assert {v: (p["acoustic"], p["vocoder"], p["precision"]) for v, p in health["placement"].items()} == ours
    assert {v: tuple(b) for v, b in health["backends"].items()} == {v: o[:2] for v, o in ours.items()}
    for v, o in opened.items():
        assert o.am_backend == "cpu" and o.voc_backend == "cpu"
        # past the CUDA EP, auto's openvino step is the FP32 graph on the CPU EP (no variant here): it opens
        assert [f.split(":")[0] for f in o.fallbacks] == ["acoustic model not on cuda", "vocoder not on cuda"], v
        assert health["placement"][v]["fallbacks"] == list(o.fallbacks)
