"""One placement: the pure plan (fake host facts) and what `info`, `Synthesizer.backends()` and `/health`
report once it is opened, which must be one and the same thing for every voice."""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sambert_deploy.cli import main
from sambert_deploy.errors import BackendUnavailableError, InvalidInputError
from sambert_deploy.runtime import backends, placement
from sambert_deploy.runtime.batching import DEFAULT_MAX_BATCH
from sambert_deploy.runtime.cuda import DeviceInfo
from sambert_deploy.runtime.gpu_plan import (
    DECODER_WINDOW_STEPS,
    GB,
    MB,
    RESERVE_BYTES,
    TIERS,
    call_bytes,
    decoder_step_bytes,
    plan_gpu,
)
from sambert_deploy.runtime.manifest import read_manifest
from sambert_deploy.runtime.placement import HostFacts, PlacementRequest, StreamOptions, plan_placement
from sambert_deploy.runtime.synthesizer import Synthesizer
from sambert_deploy.runtime.voices import open_voice

from .conftest import need_module
from .test_runtime import symbol_units
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
    cap, calls = both.backend_options.gpu_mem_limit, both.gpu.vocoder_bytes
    assert cap is not None and calls > 0 and cap == (4 * GB - RESERVE_BYTES - 2 * calls) // sessions
    # A vocoder's arena also holds the calls in flight (several windows each with a vocoder batch)
    assert both.vocoder_mem_limit == cap + calls
    # every arena of both voices at its cap still fits
    assert cap * (sessions - 2) + 2 * (cap + calls) + RESERVE_BYTES <= 4 * GB
    assert one.backend_options.gpu_mem_limit == (4 * GB - RESERVE_BYTES - calls) // (sessions // 2)


def test_a_vocoder_batch_reaches_the_vocoder_arena_not_the_others(tiny_bundles: dict[str, Path]) -> None:
    """A larger vocoder batch raises the vocoder session's arena cap by its windows and lowers the others'."""
    m = read_manifest(tiny_bundles["causal"])
    caps = {}
    for vb in (1, 8):
        p = plan_placement(m, PlacementRequest(backend="cuda", max_gpu_memory=4 * GB, vocoder_batch=vb), GPU_HOST)
        assert p.gpu is not None and p.vocoder_mem_limit is not None and p.backend_options.gpu_mem_limit is not None
        caps[vb] = (p.backend_options.gpu_mem_limit, p.vocoder_mem_limit, p.gpu.vocoder_bytes)
    (cap1, voc1, calls1), (cap8, voc8, calls8) = caps[1], caps[8]
    assert calls8 == 8 * calls1 and voc8 - cap8 == calls8 and cap8 < cap1 and voc8 > voc1


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


# -- streams per decoder call (issue 20): decided by the placement, overridable, counted in the GPU estimate ----
def test_the_memory_tier_gives_the_decoder_batch(tiny_bundles: dict[str, Path]) -> None:
    m = read_manifest(tiny_bundles["causal"])
    for tier in TIERS:  # bigger cards batch more streams per call, never fewer
        assert tier.decoder_batch >= 1
    assert [t.decoder_batch for t in TIERS] == sorted(t.decoder_batch for t in TIERS)
    gpu = plan_placement(m, PlacementRequest(backend="cuda"), GPU_HOST)
    assert gpu.gpu is not None and gpu.gpu.tier == "workstation"
    tier = next(t for t in TIERS if t.name == "workstation")
    assert gpu.decoder_batch == gpu.gpu.decoder_batch == tier.decoder_batch != DEFAULT_MAX_BATCH
    assert f"decoder steps of up to {tier.decoder_batch} stream(s) per call" in gpu.gpu.describe()
    big = replace(GPU_HOST, gpu=DeviceInfo(0, "Fake H200", "9.0", 130 * GB, 141 * GB))
    assert plan_placement(m, PlacementRequest(backend="cuda"), big).decoder_batch == TIERS[-1].decoder_batch
    cpu = HostFacts(("cpu",), {"cuda": "no CUDA here"}, cpus=2)
    assert plan_placement(m, PlacementRequest(), cpu).decoder_batch == DEFAULT_MAX_BATCH
    # the vocoder alone on the GPU: the decoder runs on the CPU, with the CPU's batch
    split = plan_placement(m, PlacementRequest(am_backend="cpu", voc_backend="cuda"), GPU_HOST)
    assert split.gpu is not None and split.decoder_batch == DEFAULT_MAX_BATCH
    unknown = replace(GPU_HOST, gpu=None, gpu_note="no CUDA runtime library")  # no tier: the CPU's batch, said
    blind = plan_placement(m, PlacementRequest(backend="cuda"), unknown)
    assert blind.gpu is None and blind.decoder_batch == DEFAULT_MAX_BATCH
    assert any(f"decoder steps of up to {DEFAULT_MAX_BATCH} streams per call" in n for n in blind.notes)


def test_decoder_batch_override_and_bad_values(tiny_bundles: dict[str, Path]) -> None:
    m = read_manifest(tiny_bundles["causal"])
    cpu = HostFacts(("cpu",), {"cuda": "no CUDA here"}, cpus=2)
    for host in (GPU_HOST, cpu):
        p = plan_placement(m, PlacementRequest(backend="cuda", decoder_batch=3), host)
        assert p.decoder_batch == 3 and p.decoder_batch_on("cpu") == 3 and p.decoder_batch_on("cuda") == 3
    p = plan_placement(m, PlacementRequest(backend="cuda", decoder_batch=3), GPU_HOST)
    assert p.gpu is not None and p.gpu.decoder_batch == 3
    for bad in (0, -4, 2.5, True, "8"):
        with pytest.raises(InvalidInputError, match="decoder_batch must be an integer >= 1") as e:
            PlacementRequest(decoder_batch=bad)  # type: ignore[arg-type]
        assert e.value.param == "decoder_batch"
    with pytest.raises(InvalidInputError, match="decoder_batch"):
        Synthesizer(tiny_bundles["causal"], backend="cpu", decoder_batch=0)
    r = CliRunner().invoke(main, ["synth", str(tiny_bundles["causal"]), "x", "-o", "-", "--decoder-batch", "0"])
    assert r.exit_code == 2 and "--decoder-batch" in r.output


def test_the_gpu_estimate_counts_the_decoder_batch(tiny_bundles: dict[str, Path]) -> None:
    m = read_manifest(tiny_bundles["causal"])
    vm = m.voices[m.default_voice]
    a = vm.acoustic
    step = decoder_step_bytes(a.decoder_layers, a.decoder_heads, a.decoder_head_dim)
    assert step == 8 * a.decoder_layers * a.decoder_heads * DECODER_WINDOW_STEPS * a.decoder_head_dim * 4
    one = plan_placement(m, PlacementRequest(backend="cuda", decoder_batch=1), GPU_HOST).gpu
    many = plan_placement(m, PlacementRequest(backend="cuda", decoder_batch=64), GPU_HOST).gpu
    assert one is not None and many is not None and one.tier == many.tier
    assert many.estimate - one.estimate == one.gpu_streams * 63 * step
    # the full-size decoder (12 layers, 8 heads of 16): its windows decide between tiers near a boundary
    full = decoder_step_bytes(12, 8, 16)
    weights = 67 * MB
    plain = plan_gpu(16 * GB, weights, hop=200)
    assert plain.estimate < plan_gpu(16 * GB, weights, hop=200, step_bytes=full).estimate
    wide = plan_gpu(16 * GB, weights, hop=200, step_bytes=full, decoder_batch=4096)
    assert wide.decoder_batch == 4096 and wide.estimate <= wide.budget and wide.tier != plain.tier


def test_the_vocoder_batch_follows_the_tier_and_the_estimate_counts_it(tiny_bundles: dict[str, Path]) -> None:
    """On the CUDA EP the tier's windows per vocoder call (and the estimate holds that many windows per
    call in flight); on a CPU 1 unless asked; TensorRT 1 (its engines run one window)."""
    m = read_manifest(tiny_bundles["causal"])
    one = plan_placement(m, PlacementRequest(backend="cuda", vocoder_batch=1), GPU_HOST)
    four = plan_placement(m, PlacementRequest(backend="cuda", vocoder_batch=4), GPU_HOST)
    tiered = plan_placement(m, PlacementRequest(backend="cuda"), GPU_HOST)
    assert one.gpu is not None and four.gpu is not None and tiered.gpu is not None
    assert one.gpu.tier == four.gpu.tier == tiered.gpu.tier
    voc = m.voices[m.default_voice].vocoder
    per_call = call_bytes(one.gpu.vocoder_chunk + voc.context_left, voc.hop)
    assert four.gpu.estimate - one.gpu.estimate == one.gpu.gpu_streams * 3 * per_call
    assert tiered.vocoder_batch_on("cuda") == tiered.gpu.vocoder_batch > 1
    assert "vocoder windows of up to" in tiered.gpu.describe()
    assert tiered.vocoder_batch_on("cpu") == tiered.vocoder_batch_on("tensorrt") == 1
    assert four.vocoder_batch_on("cpu") == 4  # asked: wherever the vocoder opened
    cpu = HostFacts(("cpu",), {"cuda": "no CUDA here"}, cpus=2)
    assert plan_placement(m, PlacementRequest(backend="cpu"), cpu).vocoder_batch_on("cpu") == 1
    for bad in (0, -4, 2.5, True, "8"):
        with pytest.raises(InvalidInputError, match="vocoder_batch must be an integer >= 1") as e:
            PlacementRequest(vocoder_batch=bad)  # type: ignore[arg-type]
        assert e.value.param == "vocoder_batch"


def test_the_decoder_batch_reaches_the_opened_acoustic_model(tiny_bundles: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    m = read_manifest(tiny_bundles["causal"])
    name = m.default_voice
    cpu = HostFacts(("cpu",), {"cuda": "no CUDA here"}, cpus=2)
    for asked, want in ((None, DEFAULT_MAX_BATCH), (3, 3)):
        v = open_voice(m, plan_placement(m, PlacementRequest(backend="cpu", decoder_batch=asked), cpu), name)
        try:
            assert v.opened.decoder_batch == want
        finally:
            v.close()
    # planned on the GPU (the tier's batch), opened on the CPU: the batch follows where it opened
    def refuse(self: Any) -> Any:
        raise BackendUnavailableError("CUDA EP cannot start here")

    monkeypatch.setattr(backends.OrtCudaBackend, "open", refuse)
    gpu = plan_placement(m, PlacementRequest(backend="cuda"), GPU_HOST)
    assert gpu.decoder_batch != DEFAULT_MAX_BATCH
    v = open_voice(m, gpu, name)
    try:
        assert v.opened.am_backend == "cpu" and v.opened.decoder_batch == DEFAULT_MAX_BATCH
    finally:
        v.close()
    v = open_voice(m, plan_placement(m, PlacementRequest(backend="cuda", decoder_batch=5), GPU_HOST), name)
    try:
        assert v.opened.am_backend == "cpu" and v.opened.decoder_batch == 5  # the user's value holds anywhere
    finally:
        v.close()


def test_synthesizer_decoder_batch_of_one_runs_every_step_alone(tiny_bundles: dict[str, Path]) -> None:
    """Through the public API only: with decoder_batch=1, concurrent streams never share a decoder call."""
    sym = symbol_units(40)
    with Synthesizer(tiny_bundles["causal"], backend="cpu", threads=2, decoder_batch=1) as syn:
        assert syn.placement.decoder_batch == 1
        streams = [syn.stream(symbols=sym) for _ in range(4)]
        with ThreadPoolExecutor(4) as pool:
            sizes = list(pool.map(lambda s: sum(len(c.samples) for c in s), streams))
        act = syn.activity()
    assert len(set(sizes)) == 1 and sizes[0] > 0
    assert act.decoder_steps > 0 and act.decoder_calls == act.decoder_steps


def test_cli_decoder_batch_reaches_the_opened_voice(tiny_bundles: dict[str, Path], tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """synth --decoder-batch: the opened acoustic model's batch, as its load line reports it; serve and ui
    take the option and refuse a bad value in one line, before loading anything."""
    sym = tmp_path / "sym.txt"
    sym.write_text("1\t" + symbol_units(20) + "\n", "utf-8")
    caplog.set_level(logging.INFO, logger="sambert_deploy")
    r = CliRunner().invoke(main, ["synth", str(tiny_bundles["causal"]), "--symbols-file", str(sym),
                                  "-o", str(tmp_path / "out.wav"), "--backend", "cpu", "--decoder-batch", "2",
                                  "--vocoder-batch", "3"])
    assert r.exit_code == 0, r.output
    opened = [rec.getMessage() for rec in caplog.records if rec.name.endswith("voices")]
    assert any(re.match(r"voice \S+: acoustic model on cpu \(decoder steps of up to 2 streams per call\), vocoder "
                        r"on cpu in \w+ \(windows of up to 3 streams per call\)", m) for m in opened), opened
    for command in ("serve", "ui", "wyoming"):
        for flag in ("--decoder-batch", "--vocoder-batch"):
            r = CliRunner().invoke(main, [command, str(tiny_bundles["causal"]), flag, "0"])
            assert r.exit_code == 2 and flag in r.output and "No such option" not in r.output, (command, r.output)
