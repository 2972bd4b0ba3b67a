"""OpenVINO backend: parity with ONNX Runtime, precision hints, central input checks, lifecycle, calls
from several threads, cancellation, and how it is selected (or refused when the extra is missing)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sambert_deploy.errors import (
    BackendClosedError,
    BundleError,
    InvalidInputError,
    MissingExtraError,
    StreamCancelledError,
)
from sambert_deploy.runtime import backends
from sambert_deploy.runtime.backends import (
    BackendOptions,
    CancelToken,
    OpenVinoBackend,
    OrtBackend,
    available_backends,
    make_backend,
    probe_backends,
    select_backend,
)
from sambert_deploy.runtime.manifest import read_manifest

from .conftest import need_module

ov = need_module("openvino", "the openvino extra (pip install 'sambert-deploy[openvino]')")

# The exporter traces the vocoder at 29 frames and checks 1, 2, 57 and 240: these are none of them.
UNTRACED = (53, 131)


@pytest.fixture(scope="module")
def vocoder(tiny_bundles: dict[str, Path]) -> Path:
    m = read_manifest(tiny_bundles["causal"])
    return m.graph_path(m.voice(None), "vocoder")


def _mel(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 20, frames)).astype(np.float32)


def _bf16_capable() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])


# -- numbers ------------------------------------------------------------------------------------------

def test_f32_matches_ort_on_untraced_lengths(vocoder: Path) -> None:
    with OrtBackend(vocoder, BackendOptions(threads=1)) as ref, \
            OpenVinoBackend(vocoder, BackendOptions(threads=1)) as be:
        assert be.effective_config()["INFERENCE_PRECISION_HINT"] == "f32"  # set, though this CPU may default to bf16
        assert be.inputs["mel"].dtype == np.float32 and be.inputs["mel"].shape == (None, 20, None)  # batch, frames
        assert be.output_names == ref.output_names == ["audio"]
        for frames in UNTRACED:
            want = ref.run({"mel": _mel(frames, frames)})["audio"]
            got = be.run({"mel": _mel(frames, frames)})["audio"]
            assert got.shape == want.shape == (1, 1, frames * 200) and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bf16_hint_is_close_but_not_equal(vocoder: Path) -> None:
    with OrtBackend(vocoder) as ref, OpenVinoBackend(vocoder, BackendOptions(threads=1, precision_hint="bf16")) as be:
        mel = _mel(UNTRACED[0])
        want = ref.run({"mel": mel})["audio"]
        got = be.run({"mel": mel})["audio"]
        assert got.shape == want.shape
        rel_rms = float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)))
        assert rel_rms < 0.05, rel_rms
        if not _bf16_capable():
            pytest.skip("this CPU has no BF16 (OPTIMIZATION_CAPABILITIES lacks it): OpenVINO computes in f32")
        assert be.effective_config()["INFERENCE_PRECISION_HINT"] == "bf16"
        assert np.abs(got - want).max() > 1e-4


def test_precision_hint_is_checked(vocoder: Path) -> None:
    with pytest.raises(InvalidInputError, match="precision_hint 'int8' is unknown; choose one of f32, bf16, f16") as e:
        BackendOptions(precision_hint="int8")
    assert e.value.param == "precision_hint"
    opts = BackendOptions()
    opts.precision_hint = "fp32"  # set after construction: caught when the backend is made
    with pytest.raises(InvalidInputError, match="precision_hint"):
        OpenVinoBackend(vocoder, opts)
    with pytest.raises(InvalidInputError, match="use the openvino backend"):
        OrtBackend(vocoder, BackendOptions(precision_hint="bf16"))
    with OrtBackend(vocoder, BackendOptions(precision_hint="f16")) as be:  # ORT runs the graph's own types
        assert be.run({"mel": _mel(5)})["audio"].shape == (1, 1, 1000)


def test_attention_graphs_compile_and_match(tiny_bundles: dict[str, Path]) -> None:
    """Every graph of a voice opens with one thread per stream (OpenVINO 2026.4 crashed the process
    compiling the decoder step's attention in f32 so), and the decoder step matches ORT."""
    m = read_manifest(tiny_bundles["causal"])
    voice = m.voice(None)
    for graph in voice.graphs:
        with OpenVinoBackend(m.graph_path(voice, graph), BackendOptions(threads=1)) as be:
            assert be.output_names
    sizes = {"batch": 3, "x_window": 7, "x_window_plus_one": 8, "h_window": 5}
    with OrtBackend(m.graph_path(voice, "decoder_step")) as ref, \
            OpenVinoBackend(m.graph_path(voice, "decoder_step"), BackendOptions(threads=1)) as be:
        rng = np.random.default_rng(3)
        feeds = {n: rng.standard_normal([d if isinstance(d, int) else sizes[d] for d in i.shape]).astype(np.float32)
                 for n, i in ref.inputs.items()}
        want, got = ref.run(feeds), be.run(feeds)
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


# -- interface ----------------------------------------------------------------------------------------

def test_inputs_are_checked_centrally(vocoder: Path) -> None:
    with OpenVinoBackend(vocoder) as be:
        with pytest.raises(InvalidInputError, match="input 'mel' has dtype float64"):
            be.run({"mel": np.zeros((1, 20, 5))})
        with pytest.raises(InvalidInputError, match="input 'mel' has rank 2"):
            be.run({"mel": np.zeros((20, 5), np.float32)})
        with pytest.raises(InvalidInputError, match="axis 1 is 3, expected 20"):
            be.run({"mel": np.zeros((1, 3, 5), np.float32)})
        with pytest.raises(InvalidInputError, match=r"missing \['mel'\]"):
            be.run({})
        with pytest.raises(InvalidInputError, match=r"unexpected \['pitch'\]"):
            be.run({"mel": _mel(5), "pitch": _mel(5)})
        assert be.run({"mel": _mel(5)})["audio"].shape == (1, 1, 1000)


def test_lifecycle(vocoder: Path, tmp_path: Path) -> None:
    be = OpenVinoBackend(vocoder)
    assert not be.is_open
    with pytest.raises(BackendClosedError, match="not open; call open"):  # never opened lazily
        be.run({"mel": _mel(5)})
    with pytest.raises(BackendClosedError, match="not open"):
        be.effective_config()
    assert be.open() is be and be.is_open
    assert be.run({"mel": _mel(5)})["audio"].shape == (1, 1, 1000)
    be.close()
    assert not be.is_open
    with pytest.raises(BackendClosedError, match="backend was closed"):
        be.run({"mel": _mel(5)})
    with pytest.raises(BackendClosedError):
        be.open()
    with pytest.raises(BundleError, match="is missing; re-export the bundle"):
        OpenVinoBackend(tmp_path / "none.onnx").open()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(vocoder.read_bytes()[:5000])
    with pytest.raises(BundleError, match="damaged: re-export the bundle") as e:
        OpenVinoBackend(broken).open()
    assert "Exception from" not in str(e.value)  # OpenVINO's source-location lines are not the reason


def test_outputs_are_copies(vocoder: Path) -> None:
    with OpenVinoBackend(vocoder, BackendOptions(threads=1)) as be:
        first = be.run({"mel": _mel(7, 1)})["audio"]
        kept = first.copy()
        be.run({"mel": _mel(7, 2)})  # a pooled request reuses its buffers
        np.testing.assert_array_equal(first, kept)


def test_threads_give_serial_results(vocoder: Path) -> None:
    frames = [11, 23, 53, 37] * 3
    with OpenVinoBackend(vocoder, BackendOptions(threads=1)) as be:
        serial = [be.run({"mel": _mel(f, i)})["audio"] for i, f in enumerate(frames)]
        results: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def work(k: int) -> None:
            try:
                start.wait()
                for i in range(k, len(frames), 4):
                    results[i] = be.run({"mel": _mel(frames[i], i)})["audio"]
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for i, want in enumerate(serial):
            np.testing.assert_array_equal(results[i], want)


# -- cancellation -------------------------------------------------------------------------------------

class _StartedToken(CancelToken):
    """Tells when a call has registered, i.e. is about to start or running."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()

    @contextmanager
    def running(self, run_options: Any) -> Iterator[None]:
        with super().running(run_options):
            self.started.set()
            yield


def test_cancel_stops_a_running_call(vocoder: Path) -> None:
    long_mel = np.zeros((1, 20, 5000), np.float32)
    with OpenVinoBackend(vocoder, BackendOptions(threads=1)) as be:
        be.run({"mel": long_mel})  # also prepares this shape, so the timed calls below run the graph alone
        t0 = time.perf_counter()
        be.run({"mel": long_mel})
        full = time.perf_counter() - t0

        token = _StartedToken()
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                be.run({"mel": long_mel}, token=token)
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 - checked below
                outcome.append(e)

        t0 = time.perf_counter()
        worker = threading.Thread(target=call)
        worker.start()
        assert token.started.wait(30)
        token.cancel()
        worker.join(30)
        took = time.perf_counter() - t0
        assert len(outcome) == 1 and isinstance(outcome[0], StreamCancelledError), outcome
        assert took < 0.5 * full, (took, full)

        # The cancelled request went back to the pool and still computes the right numbers.
        with OrtBackend(vocoder) as ref:
            mel = _mel(UNTRACED[1])
            np.testing.assert_allclose(be.run({"mel": mel})["audio"], ref.run({"mel": mel})["audio"],
                                       rtol=1e-4, atol=1e-5)


def test_cancelled_token_refuses_to_start(vocoder: Path) -> None:
    with OpenVinoBackend(vocoder) as be:
        token = CancelToken()
        assert be.run({"mel": _mel(5)}, token=token)["audio"].shape == (1, 1, 1000)
        token.cancel()  # after its call ended: must not reach the pooled request's next user
        assert be.run({"mel": _mel(5)})["audio"].shape == (1, 1, 1000)
        with pytest.raises(StreamCancelledError, match="stream cancelled"):
            be.run({"mel": _mel(5)}, token=token)


# -- selection ----------------------------------------------------------------------------------------

def test_selected_for_the_vocoder(no_cuda: None, vocoder: Path) -> None:
    assert available_backends() == ["openvino", "cpu"]
    assert select_backend("auto", stage="vocoder") == "openvino"
    assert select_backend("auto", stage="am") == "cpu"  # ORT's per-call overhead is lower
    assert select_backend("auto") == "cpu"
    assert select_backend("openvino", strict=True) == "openvino"
    assert select_backend("cuda", stage="vocoder") == "openvino"  # falls back along the stage's order
    assert select_backend("cuda") == "cpu"
    with pytest.raises(InvalidInputError, match="stage 'postnet' is unknown"):
        select_backend("auto", stage="postnet")
    be = make_backend("openvino", vocoder)
    assert isinstance(be, OpenVinoBackend) and be.kind == "openvino"
    assert probe_backends(vocoder) == {"openvino": None, "cpu": None}


def test_missing_extra(no_cuda: None, vocoder: Path, monkeypatch: pytest.MonkeyPatch,
                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    assert available_backends() == ["cpu"]
    with pytest.raises(MissingExtraError, match=r"pip install 'sambert-deploy\[openvino\]'"):
        select_backend("openvino", strict=True, stage="vocoder")
    with caplog.at_level(logging.INFO, logger=backends.__name__):
        assert select_backend("openvino") == "cpu"
    assert "backend openvino not used" in caplog.text and "sambert-deploy[openvino]" in caplog.text
    assert select_backend("auto", stage="vocoder") == "cpu"
    with pytest.raises(MissingExtraError, match=r"sambert-deploy\[openvino\]"):
        make_backend("openvino", vocoder)
    with pytest.raises(MissingExtraError, match=r"sambert-deploy\[openvino\]"):
        OpenVinoBackend(vocoder).open()
