"""The one backend interface on the CPU: lifecycle (no lazy open), the input check every call path
goes through, capability flags instead of class checks, and the CUDA EP's I/O-binding path (device-
resident outputs, cancellation through ``RunOptions.terminate``) run on the CPU EP by a subclass that
binds to ``cpu`` instead of ``cuda``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from sambert_deploy.errors import BackendClosedError, InvalidInputError, StreamCancelledError
from sambert_deploy.runtime.backends import Backend, CancelToken, OrtBackend, OrtCudaBackend
from sambert_deploy.runtime.manifest import read_manifest
from sambert_deploy.runtime.pipeline import OneShot

from .test_runtime import symbol_units


class CpuBoundCuda(OrtCudaBackend):
    """The CUDA EP backend's code with its device swapped for the CPU: same I/O binding, same
    ``to_device``/``run_keep``/cancellation, on the CPU EP. Records what ``run_keep`` was given."""

    device = "cpu"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls: list[tuple[frozenset[str], dict[str, type]]] = []

    def providers(self) -> list[Any]:
        return ["CPUExecutionProvider"]

    def run_keep(self, feeds: Mapping[str, Any], keep: frozenset[str] = frozenset(),
                 token: CancelToken | None = None, validate: bool = False) -> dict[str, Any]:
        self.calls.append((keep, {k: type(v) for k, v in feeds.items()}))
        return super().run_keep(feeds, keep, token, validate)


class _Recording:
    """An ORT session that records the run options of each I/O-binding call and can cancel a token
    while the call is under way (after it registered, before ORT runs the graph)."""

    def __init__(self, session: Any, cancel: CancelToken | None = None):
        self.session, self.cancel = session, cancel
        self.run_options: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run_with_iobinding(self, binding: Any, run_options: Any = None) -> None:
        self.run_options.append(run_options)
        if self.cancel is not None:
            self.cancel.cancel()
        self.session.run_with_iobinding(binding, run_options)


@pytest.fixture(scope="module")
def vocoder(tiny_bundles: dict[str, Path]) -> Path:
    m = read_manifest(tiny_bundles["causal"])
    return m.graph_path(m.voice(None), "vocoder")


def _mel(frames: int, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(frames).standard_normal((1, 20, frames)).astype(dtype)


# -- lifecycle ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [OrtBackend, CpuBoundCuda])
def test_never_opened_or_closed_backend_refuses_to_run(vocoder: Path, cls: type[Backend]) -> None:
    be = cls(vocoder)
    calls = {"run": lambda: be.run({"mel": _mel(5)}), "run_keep": lambda: be.run_keep({"mel": _mel(5)}),
             "inputs": lambda: be.inputs, "output_names": lambda: be.output_names}
    for what, call in calls.items():
        with pytest.raises(BackendClosedError, match=r"vocoder.onnx: backend is not open; call open\(\)"):
            call()
        assert not be.is_open, what  # not opened as a side effect
    with be:
        assert be.run({"mel": _mel(5)})["audio"].shape == (1, 1, 1000)
    for what, call in calls.items():
        with pytest.raises(BackendClosedError, match="backend was closed; create a new one"):
            call()
        assert not be.is_open, what
    with pytest.raises(BackendClosedError, match="was closed"):
        be.open()


# -- one input check ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [OrtBackend, CpuBoundCuda])
def test_first_call_is_checked_whatever_the_caller_says(vocoder: Path, cls: type[Backend]) -> None:
    with cls(vocoder) as be:
        with pytest.raises(InvalidInputError, match="input 'mel' has dtype float64, expected float32"):
            be.run_keep({"mel": _mel(5, np.float64)})
        with pytest.raises(InvalidInputError, match="input 'mel' has rank 2"):
            be.run({"mel": _mel(5)[0]}, validate=False)
        assert be.run_keep({"mel": _mel(5)})["audio"].shape == (1, 1, 1000)
        # Once a call passed, a hot loop's validate=False is trusted; validate=True still checks.
        with pytest.raises(InvalidInputError, match="input 'mel' axis 1 is 3, expected 20"):
            be.run_keep({"mel": np.zeros((1, 3, 5), np.float32)}, validate=True)


def test_device_values_are_checked_too(vocoder: Path) -> None:
    """run_keep's inputs that live on the device (OrtValues) go through the same check."""
    with CpuBoundCuda(vocoder) as be:
        with pytest.raises(InvalidInputError, match="input 'mel' has dtype float64"):
            be.run_keep({"mel": be.to_device(_mel(5, np.float64))})
        with pytest.raises(InvalidInputError, match="input 'mel' axis 1 is 3"):
            be.run_keep({"mel": be.to_device(np.zeros((1, 3, 5), np.float32))})
        with pytest.raises(InvalidInputError, match="must be a numpy array or a value of its to_device"):
            be.run_keep({"mel": [[0.0]]})
        assert be.run_keep({"mel": be.to_device(_mel(5))})["audio"].shape == (1, 1, 1000)


# -- the CUDA EP's I/O-binding path -------------------------------------------------------------------

def test_io_binding_keeps_outputs_and_equals_run(vocoder: Path) -> None:
    with CpuBoundCuda(vocoder) as be, OrtBackend(vocoder) as ref:
        assert be.keeps_outputs_on_device and not ref.keeps_outputs_on_device
        kept = be.run_keep({"mel": be.to_device(_mel(9))}, frozenset({"audio"}))["audio"]
        assert isinstance(kept, ort.OrtValue)
        np.testing.assert_array_equal(kept.numpy(), ref.run({"mel": _mel(9)})["audio"])
        plain = be.run_keep({"mel": _mel(9)})["audio"]
        assert isinstance(plain, np.ndarray)
        np.testing.assert_array_equal(plain, kept.numpy())


def test_io_binding_call_honours_the_cancel_token(vocoder: Path) -> None:
    with CpuBoundCuda(vocoder) as be:
        be.run_keep({"mel": _mel(5)})
        real = be.session
        # No token: no run options (ORT's default).
        be.session = rec = _Recording(real)
        be.run_keep({"mel": _mel(5)})
        assert rec.run_options == [None]
        # A token: its run options reach run_with_iobinding, and a cancel during the call stops it.
        token = CancelToken()
        be.session = rec = _Recording(real, cancel=token)
        with pytest.raises(StreamCancelledError, match="stream cancelled"):
            be.run_keep({"mel": _mel(5)}, token=token)
        assert len(rec.run_options) == 1 and isinstance(rec.run_options[0], ort.RunOptions)
        assert rec.run_options[0].terminate  # set by the token, read by ORT
        # A cancelled token refuses to start the call.
        be.session = rec = _Recording(real)
        with pytest.raises(StreamCancelledError):
            be.run_keep({"mel": _mel(5)}, token=token)
        assert rec.run_options == []
        # The session is fine afterwards.
        be.session = real
        assert be.run_keep({"mel": _mel(5)}, token=CancelToken())["audio"].shape == (1, 1, 1000)


# -- capability flags drive the acoustic model --------------------------------------------------------

class _RecordingCpu(OrtBackend):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls: list[tuple[frozenset[str], dict[str, type]]] = []

    def run_keep(self, feeds: Mapping[str, Any], keep: frozenset[str] = frozenset(),
                 token: CancelToken | None = None, validate: bool = False) -> dict[str, Any]:
        self.calls.append((keep, {k: type(v) for k, v in feeds.items()}))
        return super().run_keep(feeds, keep, token, validate)


@pytest.mark.parametrize("cls", [CpuBoundCuda, _RecordingCpu])
def test_keeps_outputs_on_device_drives_the_decoder_window(tiny_bundles: dict[str, Path],
                                                           cls: type[CpuBoundCuda | _RecordingCpu]) -> None:
    """The decoder's key/value window stays on the device exactly where the backend says it can (the
    flag, not the class), and the audio is the same either way."""
    units = symbol_units(23, 3)
    with OneShot(tiny_bundles["causal"], backend="cpu") as ref:
        want = ref.run(units).audio
    with OneShot(tiny_bundles["causal"], backend="cpu") as one:
        old = one.am.sessions["decoder_step"]
        dec = cls(old.path, old.options).open()
        one.am.sessions["decoder_step"] = dec
        old.close()
        got = one.run(units).audio
    assert len(dec.calls) > 3
    device = dec.keeps_outputs_on_device
    for i, (keep, kinds) in enumerate(dec.calls):
        assert keep == (frozenset({"x_k_out", "x_v_out"}) if device else frozenset())
        assert kinds["x_k"] is (ort.OrtValue if device else np.ndarray), i
        assert kinds["prev"] is np.ndarray
    np.testing.assert_array_equal(got, want)


def test_cuda_ep_computes_fp32_in_fp32_unless_asked() -> None:
    """ORT's CUDA EP uses TF32 by default on Ampere and later (1.6e-2 off the CPU's FP32 on an H200):
    the provider options turn it off unless ``tf32`` is asked for."""
    from sambert_deploy.runtime.backends import BackendOptions, OrtCudaBackend

    def cuda_options(options: BackendOptions) -> dict:
        (name, opts), *_ = OrtCudaBackend("graph.onnx", options).providers()
        assert name == "CUDAExecutionProvider"
        return opts

    assert cuda_options(BackendOptions())["use_tf32"] == 0
    assert cuda_options(BackendOptions(tf32=True))["use_tf32"] == 1
