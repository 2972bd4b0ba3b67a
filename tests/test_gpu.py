"""CUDA EP checks: run where onnxruntime-gpu and a GPU exist (`pytest -m gpu`, scripts/gpu_run.sh)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sambert_deploy.runtime.synthesizer import Synthesizer

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
