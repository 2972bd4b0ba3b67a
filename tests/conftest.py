from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent
TINY = HERE / "fixtures" / "tiny"
# ../shared beside the checkout (CI clones the repo next to it); SAMBERT_SHARED points elsewhere.
SHARED = Path(os.environ.get("SAMBERT_SHARED") or REPO.parent / "shared").resolve()
FULL = SHARED / "kantts" / "fixtures" / "full"
DEV_PAIRS = SHARED / "kantts" / "frontend" / "dev_pairs.jsonl"
SEQS = ("io_seq0_short", "io_seq1_medium", "io_seq2_emotion")

# Tensor keys of ../shared/kantts/fixtures/README.md and the names the torch rebuild returns them under.
AM_KEYS = {
    "ling_embedding": "_ling_embedding", "encoder_out_pre_proj": "_encoder_out", "text_hid": "_text_hid",
    "pitch_predictions": "pitch_predictions", "energy_predictions": "energy_predictions",
    "pitch_emb_out": "_pitch_emb_out", "energy_emb_out": "_energy_emb_out",
    "log_duration_predictions": "log_duration_predictions", "LR_text_outputs": "LR_text_outputs",
    "LR_emo_outputs": "LR_emo_outputs", "LR_spk_outputs": "LR_spk_outputs", "memory": "_memory",
    "dec_outputs_lfr": "_dec_outputs_lfr", "dec_outputs": "dec_outputs", "postnet_residual": "_postnet_residual",
    "postnet_outputs": "postnet_outputs",
}


# ----------------------------------------------------------------------------------------------
# What the test install provides (the extras of `make install`, Chromium and ../shared from .ci/run):
# missing locally, a test skips and says what to install; missing under CI, it fails, because there
# a skip would hide a feature that is not tested. Hardware (the `gpu` and `trt` markers, a CPU's
# BF16) is not this: those tests skip wherever the machine lacks it, CI included.
# ----------------------------------------------------------------------------------------------


def under_ci() -> bool:
    """``CI`` set as CI services set it (``true``, ``1``); unset, empty, ``0`` or ``false`` is local."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def missing(why: str) -> NoReturn:
    """Skip with ``why``; under CI fail with it instead. Usable at module level."""
    __tracebackhide__ = True  # the report points at the test that needed it, not at this helper
    if under_ci():
        pytest.fail(f"{why} [CI provides this, so under CI its absence is a failure, not a skip]", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def need_module(name: str, source: str) -> ModuleType:
    """Import ``name``, or skip (fail under CI) naming ``source``, what installs it."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing(f"{name} is not importable ({e}); it comes with {source}")


def need_path(path: Path, what: str) -> Path:
    """``path`` when it exists, else skip (fail under CI) saying ``what`` it is."""
    __tracebackhide__ = True
    if not path.exists():
        missing(f"{what} not found at {path}")
    return path


def fixture_set(name: str) -> Path:
    if name == "tiny":
        return TINY
    return need_path(FULL, "the full-size fixtures (../shared/kantts/fixtures/full, outside the repo; "
                           "the tiny set covers the same code paths)")


@pytest.fixture(params=["tiny", "full"])
def fixset(request: pytest.FixtureRequest) -> Path:
    return fixture_set(request.param)


def make_modelscope_dir(root: Path, src: Path, voices: tuple[str, ...] = ("zhibei_emo", "zhiyan_emo"),
                        voc: str = "voc_causal", has_mask: bool | None = None, extra_ckpt: int | None = 12) -> Path:
    """Assemble a ModelScope-layout model directory from a fixture set (copies, so tests may corrupt it)."""
    import json
    import shutil

    model: dict = {"sample_rate": 16000}
    if has_mask is not None:
        model["am"] = {"linguistic_unit": {"has_mask": has_mask}}
    (root / "voices").mkdir(parents=True)
    (root / "configuration.json").write_text(json.dumps({"framework": "pytorch", "task": "text-to-speech",
                                                         "model": {"type": "sambert-hifigan", **model}}))
    (root / "voices" / "voices.json").write_text(json.dumps({"voices": list(voices)}))
    for v in voices:
        for sub, srcsub in (("am", "am"), ("voc", voc)):
            d = root / "voices" / v / sub
            (d / "ckpt").mkdir(parents=True)
            shutil.copy(src / srcsub / "config.yaml", d / "config.yaml")
            shutil.copy(src / srcsub / "ckpt" / "checkpoint_0.pth", d / "ckpt" / "checkpoint_0.pth")
            if extra_ckpt is not None:
                shutil.copy(src / srcsub / "ckpt" / "checkpoint_0.pth", d / "ckpt" / f"checkpoint_{extra_ckpt}.pth")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_modelscope_dir(tmp_path_factory.mktemp("ms") / "model", TINY)


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny bundles exported through the real exporter (with its parity gate): causal and non-causal."""
    from sambert_deploy.export.bundle import ExportOptions, export_model

    out = {}
    for variant in ("causal", "noncausal"):
        d = make_modelscope_dir(tmp_path_factory.mktemp(f"ms_{variant}") / "model", TINY, voc=f"voc_{variant}",
                                voices=("tiny_emo",), extra_ckpt=None)
        b = tmp_path_factory.mktemp(f"bundle_{variant}") / "bundle"
        export_model(d, b, options=ExportOptions(gate_units=(1, 37)))
        out[variant] = b
    return out


@contextlib.contextmanager
def uvicorn_on_loopback(app: object) -> Iterator[str]:
    """A plain uvicorn serving ``app`` in a thread on a free loopback port; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)


@pytest.fixture(scope="module")
def served_synth(tiny_bundles: dict[str, Path]) -> Iterator[object]:
    """The tiny causal voice as the HTTP tests serve it: CPU, 16-frame vocoder windows, loaded."""
    from sambert_deploy.runtime.synthesizer import StreamOptions, Synthesizer

    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=StreamOptions(vocoder_chunk=16)) as s:
        s.load("*")
        yield s
