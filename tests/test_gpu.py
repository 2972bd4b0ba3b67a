"""CUDA EP checks: run where onnxruntime-gpu and a GPU exist (`pytest -m gpu`, scripts/gpu_run.sh)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sambert_deploy.runtime.gpu_plan import TIERS
from sambert_deploy.runtime.synthesizer import Synthesizer
from sambert_deploy.runtime.voices import open_voice

from .test_runtime import symbol_units

# Hardware, not an install: these skip wherever there is no CUDA GPU, CI included (scripts/gpu_run.sh runs them).
pytestmark = [pytest.mark.gpu, pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                                                  reason="needs onnxruntime-gpu with a CUDA GPU")]


@pytest.mark.parametrize("variant", ["causal", "noncausal"])
def test_cuda_stream_matches_cpu(tiny_bundles: dict[str, Path], variant: str) -> None:
    sym = symbol_units(60)
    with Synthesizer(tiny_bundles[variant], backend="cpu") as cpu, \
            Synthesizer(tiny_bundles[variant], backend="cuda", strict=True) as gpu:
        a = cpu.synthesize(symbols=sym)
        b = gpu.synthesize(symbols=sym)
    assert a.shape == b.shape and float(np.abs(a - b).max()) < 1e-3


def test_split_placement(tiny_bundles: dict[str, Path]) -> None:
    with Synthesizer(tiny_bundles["causal"], am_backend="cuda", voc_backend="cpu", strict=True) as syn:
        assert (syn.placement.am_backend, syn.placement.voc_backend) == ("cuda", "cpu")
        assert syn.synthesize(symbols=symbol_units(20)).size > 0


def test_the_gpu_tier_decides_the_decoder_batch(tiny_bundles: dict[str, Path]) -> None:
    """On a real GPU: the tier's batch is the placement's and reaches the opened acoustic model; the
    override replaces it."""
    with Synthesizer(tiny_bundles["causal"], backend="cuda", strict=True) as syn:
        plan = syn.gpu_plan
        assert plan is not None and plan.decoder_batch in {t.decoder_batch for t in TIERS}
        assert syn.placement.decoder_batch == plan.decoder_batch
        assert f"{plan.decoder_batch} stream(s) per call" in plan.describe()
        v = open_voice(syn.manifest, syn.placement, syn.default_voice)
        try:
            assert v.opened.am_backend == "cuda" and v.opened.decoder_batch == plan.decoder_batch
        finally:
            v.close()
    with Synthesizer(tiny_bundles["causal"], backend="cuda", strict=True, decoder_batch=3) as syn:
        assert syn.gpu_plan is not None and syn.gpu_plan.decoder_batch == syn.placement.decoder_batch == 3


def test_concurrent_streams_on_cuda_match_the_cpu(tiny_bundles: dict[str, Path]) -> None:
    """Streams of different lengths (different bands, so padded windows) started together on the CUDA EP,
    where their decoder steps may share calls: each one's audio is the CPU's, stream by stream alone."""
    syms = [symbol_units(n, seed) for seed, n in enumerate((12, 37, 60, 45, 23, 51))]
    with Synthesizer(tiny_bundles["causal"], backend="cpu", decoder_batch=1) as cpu:
        refs = [cpu.synthesize(symbols=s) for s in syms]
    with Synthesizer(tiny_bundles["causal"], backend="cuda", strict=True) as gpu:
        streams = [gpu.stream(symbols=s) for s in syms]
        with ThreadPoolExecutor(len(streams)) as pool:
            got = list(pool.map(lambda s: np.concatenate([c.samples for c in s]), streams))
        act = gpu.activity()
    assert act.decoder_steps >= act.decoder_calls > 0
    for i, (a, b) in enumerate(zip(refs, got, strict=True)):
        assert a.shape == b.shape and float(np.abs(a - b).max()) < 1e-3, i
