"""Graph-level precision conversions for any vocoder ONNX: FP16, static INT8 (Q/DQ) and the conv map
that lets one INT8 recipe travel between vocoders.

Which tools, and why
--------------------
* FP16 uses onnxconverter-common's ``convert_float_to_float16(keep_io_types=True, ...)``. ModelOpt's
  AutoCast (``modelopt.onnx.autocast``) was the first choice, but in this environment it fails to
  import without ``onnx_graphsurgeon`` (an NVIDIA package the CPU install does not carry), so it
  cannot be a dependency of a CPU build. AutoCast's useful idea is kept: a *data-range guard*. The
  FP32 graph is run once on probe inputs with every float intermediate exposed; a node whose output
  magnitude exceeds :data:`FP16_SAFE_MAX` (well below fp16's 65504, leaving room for the sums that
  follow) stays FP32 via ``node_block_list``. Inputs/outputs stay FP32 so callers do not change.
* INT8 uses ONNX Runtime's ``quantize_static`` in ``QuantFormat.QDQ`` (explicit Q/DQ pairs, which
  both ORT CPU and OpenVINO turn into integer kernels), per-channel symmetric int8 weights and
  uint8 activations calibrated on the given feeds (the U8S8 pair ORT's x86 kernels are built for).
  Only Conv/ConvTranspose are quantized: they are the FLOPs of a HiFiGAN; activations between them
  stay float, so a layer kept FP32 needs no special handling of its neighbours.

Roles (:func:`conv_layers`)
---------------------------
HiFiGAN V1 names its modules conv_pre/ups/resblocks/conv_post, the KAN-TTS vocoder
conv_pre/transpose_upsamples/repeat_upsamples/conv_blocks/conv_post, so recipes name *roles* rather
than module paths: ``pre`` (first conv), ``post`` (last conv), ``up`` (ConvTranspose, or a Conv fed
by a Resize/Upsample, i.e. KAN-TTS's repeat upsampler) and ``res`` (everything else). ``stage`` is
the number of ConvTranspose nodes before the layer in topological order.

Both vocoders build their residual blocks from pairs ``convs1.k -> LeakyReLU -> convs2.k`` (``convs1``
dilated, reading the residual stream; ``convs2`` reading ``convs1``'s output), and INT8 error differs
between the two (docs/quality.md, "More INT8"), so a ``res`` conv also has a ``pair`` position, found
from the graph rather than from names: ``res2`` when its input comes from another residual conv through
activations and reshapes only, else ``res1``. Recipes name them ``res1@3``, ``res2@3``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError

log = logging.getLogger(__name__)

ROLES = ("pre", "up", "res", "post")
# What an Int8Recipe's keep_roles may name besides "*": a role, or the first/second conv of a residual pair.
KEEP_ROLES = (*ROLES, "res1", "res2")
CONV_OPS = ("Conv", "ConvTranspose")

# fp16 max is 65504; intermediates above this are followed by adds/convs that would overflow.
FP16_SAFE_MAX = 4096.0


# ----------------------------------------------------------------------------------------------
# conv map
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvLayer:
    name: str
    op: str
    role: str
    stage: int
    # 1 or 2 for a "res" conv: first (reads the residual stream) or second (reads the first) of its pair.
    pair: int = 0

    @property
    def tag(self) -> str:
        """``role@stage`` (``res1@stage``/``res2@stage`` for residual convs), as recipes name it."""
        return f"{self.role}{self.pair or ''}@{self.stage}"

    def matches(self, role: str) -> bool:
        """Whether a recipe's role (``*``, a :data:`KEEP_ROLES` entry) names this layer."""
        return role in ("*", self.role) or (self.role == "res" and role == f"res{self.pair}")


def _load(model: Path | object):  # noqa: ANN202 - onnx.ModelProto
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)  # type: ignore[arg-type]
    if not path.is_file():
        raise InvalidInputError(f"ONNX graph {path} does not exist; export the vocoder first", param="model")
    return onnx.load(str(path))


def conv_layers(model: Path) -> list[ConvLayer]:
    """Every Conv/ConvTranspose of the main graph in topological order, with a portable role and stage."""
    proto = _load(model)
    producer = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type in CONV_OPS]
    if not convs:
        raise InvalidInputError(f"{model}: the graph has no Conv/ConvTranspose node; is it a vocoder?", param="model")
    for n in convs:
        if not n.name:
            raise InvalidInputError(f"{model}: a {n.op_type} node has no name; recipes need node names "
                                    "(re-export it, or run onnx.utils / an optimizer that names nodes)", param="model")

    passthrough = ("Pad", "Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "LeakyRelu")

    def feeder(node):  # noqa: ANN001, ANN202 - onnx.NodeProto | None
        # The op behind the conv's input, past shape-preserving ops (a causal Pad, KAN-TTS's 1-D conv as
        # Unsqueeze -> Conv2d -> Squeeze, the activation): a Resize/Upsample for KAN-TTS's repeat
        # upsampler, a Conv for the second conv of a residual pair, an Add for the residual stream.
        p = producer.get(node.input[0])
        for _ in range(8):
            if p is None or p.op_type not in passthrough:
                return p
            p = producer.get(p.input[0])
        return None

    out: list[ConvLayer] = []
    by_name: dict[str, ConvLayer] = {}
    stage = 0
    last = len(convs) - 1
    for i, n in enumerate(convs):
        src = feeder(n)
        pair = 0
        if i == 0:
            role = "pre"
        elif i == last:
            role = "post"
        elif n.op_type == "ConvTranspose" or (src is not None and src.op_type in ("Resize", "Upsample")):
            role = "up"
        else:
            role = "res"
            # Topological order: the conv feeding this one is already classified.
            prev = by_name.get(src.name) if src is not None and src.op_type == "Conv" else None
            pair = 2 if prev is not None and prev.role == "res" and prev.pair == 1 else 1
        layer = ConvLayer(n.name, n.op_type, role, stage, pair)
        out.append(layer)
        by_name[n.name] = layer
        if n.op_type == "ConvTranspose":
            stage += 1
    return out


# ----------------------------------------------------------------------------------------------
# FP16
# ----------------------------------------------------------------------------------------------


def _float_intermediates_max(proto, feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:  # noqa: ANN001
    """Max |value| of every float tensor of the main graph over ``feeds`` (FP32, ORT CPU)."""
    import onnx
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(proto)
    float_vi = {vi.name: vi for vi in inferred.graph.value_info
                if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    known = {o.name for o in probe.graph.output}
    for name, vi in float_vi.items():
        if name not in known:
            probe.graph.output.append(vi)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # No fusions: fused nodes would hide the intermediates we want to see.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    peak: dict[str, float] = {}
    for feed in feeds:
        for name, value in zip(names, sess.run(names, dict(feed)), strict=True):
            if value.dtype == np.float32 and value.size:
                peak[name] = max(peak.get(name, 0.0), float(np.abs(value).max()))
    return peak


def _default_probe(proto) -> list[dict[str, np.ndarray]]:  # noqa: ANN001
    """A log-mel-like probe for vocoders (natural-log mels live in about [-11.5, 2])."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for inp in proto.graph.input:
        # A symbolic leading axis is the batch: one window is the range to probe (64 of them held
        # every intermediate 64 times over).
        dims = [d.dim_value if d.HasField("dim_value") else (1 if i == 0 else 64)
                for i, d in enumerate(inp.type.tensor_type.shape.dim)]
        feeds[inp.name] = np.clip(rng.normal(-5.0, 2.5, dims), -11.5, 2.0).astype(np.float32)
    return [feeds]


def convert_fp16(src: Path, dst: Path, probe: Iterable[Mapping[str, np.ndarray]] | None = None) -> None:
    """FP16 weights and compute, FP32 graph inputs/outputs; nodes whose FP32 outputs on ``probe``
    (default: a synthetic log-mel window) exceed :data:`FP16_SAFE_MAX` stay FP32."""
    import onnx
    from onnxconverter_common import float16

    proto = _load(src)
    peak = _float_intermediates_max(proto, probe if probe is not None else _default_probe(proto))
    hot = {n.name for n in proto.graph.node if n.name and any(peak.get(o, 0.0) > FP16_SAFE_MAX for o in n.output)}
    if hot:
        log.info("fp16: %d node(s) kept FP32 by the range guard: %s", len(hot), sorted(hot))
    with warnings.catch_warnings():
        # One warning per weight below fp16's smallest normal; flushing those to +-1e-7 is intended.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            proto, keep_io_types=True, op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST),
            node_block_list=sorted(hot), disable_shape_infer=False)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(dst))


# ----------------------------------------------------------------------------------------------
# INT8
# ----------------------------------------------------------------------------------------------


_METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class Calibration:
    """How activation ranges are found from the calibration feeds.

    ``minmax``: the observed range. ``percentile``: the ``percentile``-th percentile of |x| over a
    ``num_bins`` histogram (clips rare outliers: on the real vocoder 99.99 scored better than ORT's default
    99.999, but clipped the peaks of one demo-voice sentence; docs/quality.md).
    ``entropy``: the KL-optimal threshold over ``num_bins`` bins for 128 quantized bins; with ORT's
    default of 128 bins there is one candidate threshold, so it equals MinMax (docs/quality.md).
    ``num_bins`` None: ORT's default (2048 for percentile, 128 for entropy).
    """

    method: str = "minmax"
    percentile: float = 99.999
    num_bins: int | None = None

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise InvalidInputError(f"calibration method '{self.method}' is unknown; choose one of "
                                    f"{', '.join(_METHODS)}", param="calibration.method")
        if not 50.0 < self.percentile <= 100.0:
            raise InvalidInputError(f"calibration percentile {self.percentile} is outside (50, 100]; e.g. 99.99",
                                    param="calibration.percentile")
        if self.num_bins is not None and self.num_bins < 128:
            raise InvalidInputError(f"calibration num_bins {self.num_bins} is below the 128 quantized bins; "
                                    "use e.g. 2048", param="calibration.num_bins")

    def label(self) -> str:
        bins = f", {self.num_bins} bins" if self.num_bins is not None else ""
        if self.method == "percentile":
            return f"percentile {self.percentile:g}{bins}"
        return self.method + bins

    def settings(self) -> dict[str, Any]:
        """What a calibration cache made with these settings records (and is checked against)."""
        return {"method": self.method, "num_bins": self.num_bins,
                "percentile": self.percentile if self.method == "percentile" else None}


@dataclass(frozen=True)
class Int8Recipe:
    """Which conv layers stay FP32, and how activations are calibrated. ``keep_roles`` entries are
    a role (any stage: ``pre``, ``up``, ``res``, ``post``, or ``res1``/``res2`` for the first/second
    conv of the residual pairs), ``role@stage`` or ``*@stage`` (every conv of that stage), so a recipe
    tuned on one HiFiGAN applies to another; ``keep_layers`` are exact node names (not portable: for
    sweeps)."""

    keep_roles: tuple[str, ...] = ()
    keep_layers: tuple[str, ...] = ()
    name: str = ""
    # Symmetric int8 activations (zero point 0) instead of asymmetric uint8: TensorRT's explicit
    # quantization takes only these; ONNX Runtime and OpenVINO run both.
    symmetric: bool = False
    calibration: Calibration = field(default_factory=Calibration)

    def __post_init__(self) -> None:
        for entry in self.keep_roles:
            role, _, stage = entry.partition("@")
            if role not in ("*", *KEEP_ROLES) or (stage and not stage.isdigit()) or (role == "*" and not stage):
                raise InvalidInputError(f"INT8 recipe entry '{entry}' is not a conv role; use "
                                        f"{', '.join(KEEP_ROLES)}, role@stage or *@stage (e.g. pre,post,up,res2@3)",
                                        param="int8_keep")

    def kept(self, layers: Iterable[ConvLayer]) -> set[str]:
        """Names of the nodes this recipe keeps FP32."""
        keep: set[str] = set()
        for layer in layers:
            for entry in self.keep_roles:
                role, _, stage = entry.partition("@")
                if layer.matches(role) and (not stage or int(stage) == layer.stage):
                    keep.add(layer.name)
            if layer.name in self.keep_layers:
                keep.add(layer.name)
        return keep

    def label(self) -> str:
        if self.name:
            label = self.name
        else:
            parts = list(self.keep_roles) + ([f"{len(self.keep_layers)} layers"] if self.keep_layers else [])
            label = "keep " + "+".join(parts) if parts else "all int8"
        if self.calibration != Calibration():
            label += f", {self.calibration.label()}"
        return label + (", symmetric int8 activations" if self.symmetric else "")


# The recipes `quantize` can be asked for by name, chosen on the universal HiFiGAN V1 with real
# speech (scripts/quality.py --sweep, scripts/int8_search.py; docs/quality.md, where the numbers are).
#
# "res@1-2": only the stage-1/2 residual convs INT8 (36 of 78 convs), MinMax. Vs FP32: log-mel L1 0.078
# nats (worst recording 0.098), PESQ vs FP32 4.43 (worst 4.24). Per-layer sensitivity is ~0.004-0.03
# nats per stage-1/2 conv but 0.04-0.77 for stage 4, up@3 and conv_post; whole-graph INT8 is 0.99
# nats (destroyed). Stage 3 as a whole fails the gate (0.32-0.40 nats whatever the calibration).
#
# "res@1-2+res1@3": also the first conv of each stage-3 residual pair (45 of 78), calibrated to the
# 99.999th percentile. The stage-3 convs1 cost <= 0.025 nats each, their convs2 up to 0.17, and
# clipping the rarest activations lowers the INT8 noise floor: worst recording log-mel L1 0.108, PESQ
# vs FP32 4.37 (OpenVINO 0.109, 4.35). "-p99.99" clips more: better on the real vocoder (0.088, 4.47)
# but one of 12 sentences of the demo bundle's causal KAN-TTS voice falls to PESQ vs FP32 3.6-3.8
# (its own gate fails; 99.999 and MinMax pass there). Neither is the default: on HiFiGAN V1 the
# candidate runs in 0.85-0.92x the default's time, but on the KAN-TTS vocoders `quantize` builds
# (32-channel stage 3) the gain is within timing noise (docs/quality.md, "Adoption check").
INT8_RECIPES: dict[str, Int8Recipe] = {r.name: r for r in (
    Int8Recipe(keep_roles=("pre", "post", "up", "*@3", "*@4"), name="res@1-2"),
    Int8Recipe(keep_roles=("pre", "post", "up", "res2@3", "*@4"), name="res@1-2+res1@3",
               calibration=Calibration("percentile", 99.999)),
    Int8Recipe(keep_roles=("pre", "post", "up", "res2@3", "*@4"), name="res@1-2+res1@3-p99.99",
               calibration=Calibration("percentile", 99.99)),
)}
DEFAULT_INT8 = INT8_RECIPES["res@1-2"]


def int8_recipe(name: str) -> Int8Recipe:
    """The recipe :data:`INT8_RECIPES` holds under ``name``."""
    if name not in INT8_RECIPES:
        raise InvalidInputError(f"INT8 recipe '{name}' is unknown; choose one of {', '.join(INT8_RECIPES)} "
                                "(or give conv roles to keep FP32)", param="int8_recipe")
    return INT8_RECIPES[name]


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_int8` did."""

    recipe: Int8Recipe
    quantized: tuple[str, ...]
    kept_fp32: tuple[str, ...]
    calibration_feeds: int
    calibration: Calibration = field(default_factory=Calibration)
    notes: tuple[str, ...] = field(default_factory=tuple)


class _Reader:
    """ORT CalibrationDataReader over a list of feeds (MinMax reduces per run, so their num_frames may
    differ; :func:`_calibrate` gives the histogram calibrators one shape per call)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


# The key under which a calibration cache (ORT's JSON) records the settings it was made with.
_CACHE_KEY = "sambert_deploy_calibration"


def _calibrate(src: Path, feeds: list[dict[str, np.ndarray]], cal: Calibration, cache: Path, work: Path) -> None:
    """Activation ranges of ``src``'s conv inputs/outputs over ``feeds`` into ``cache`` (ORT's calibration
    cache format, plus the settings). ``quantize_static`` forwards only a percentile to its calibrator,
    never the histogram's bin counts, so calibration runs here and the quantizer reads the cache."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    settings = cal.settings()
    if cache.is_file():
        recorded = json.loads(cache.read_text()).get(_CACHE_KEY)
        if recorded != settings:
            # Reusing ranges of another method/percentile would silently quantize with the wrong ones.
            raise InvalidInputError(f"calibration cache {cache} holds ranges made with {recorded or 'unknown settings'}, "
                                    f"not {settings}; delete it or give a cache file per calibration",
                                    param="calibration_cache")
        return
    options: dict[str, Any] = {"symmetric": False}  # the range itself; recipe.symmetric shapes the grid
    if cal.method == "percentile":
        options["percentile"] = cal.percentile
    if cal.num_bins is not None:
        options["num_bins"] = cal.num_bins
    calibrator = create_calibrator(src, list(CONV_OPS), str(work / "augmented.onnx"), _ort_method(cal.method),
                                   providers=["CPUExecutionProvider"], extra_options=options)
    if cal.method == "minmax":
        calibrator.collect_data(_Reader(feeds))
    else:
        # ORT's histogram calibrators stack one call's outputs into one array, so feeds of different
        # num_frames fail there; histograms merge across calls, so each call gets one shape.
        groups: dict[tuple, list[dict[str, np.ndarray]]] = {}
        for f in feeds:
            groups.setdefault(tuple(sorted((k, v.shape) for k, v in f.items())), []).append(f)
        for group in groups.values():
            calibrator.collect_data(_Reader(group))
    tmp = work / "ranges.json"
    save_tensors_data(calibrator.compute_data(), tmp)
    payload = json.loads(tmp.read_text())
    payload[_CACHE_KEY] = settings
    cache.parent.mkdir(parents=True, exist_ok=True)
    part = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    part.write_text(json.dumps(payload))
    os.replace(part, cache)


def _ort_method(name: str):  # noqa: ANN202 - onnxruntime.quantization.CalibrationMethod
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


def quantize_int8(src: Path, dst: Path, calibration: Iterable[dict[str, np.ndarray]],
                  recipe: Int8Recipe = DEFAULT_INT8, *, calibrate_method: Calibration | str | None = None,
                  calibration_cache: Path | None = None) -> QuantizeReport:
    """Static INT8 (Q/DQ) of every conv ``recipe`` does not keep FP32, activations calibrated on
    ``calibration`` (dicts of graph inputs, e.g. ``{"mel": f32 [1,80,F]}``, F may differ per feed).

    ``calibrate_method`` overrides the recipe's calibration (a :class:`Calibration`, or a method name
    with its defaults). ``calibration_cache`` (a JSON file) stores the activation ranges and the
    settings they were made with: a sweep that quantizes the same graph many ways with the same feeds
    calibrates once; a cache made with other settings is refused. It does not record the graph or the
    feeds: give one file per (graph, feeds).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    feeds = [{k: np.ascontiguousarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
              for k, v in f.items()} for f in calibration]
    if not feeds:
        raise InvalidInputError("INT8 calibration needs at least one input feed (e.g. {'mel': f32 [1,80,F]} from "
                                "real speech); an empty calibration set would leave every activation range unknown",
                                param="calibration")
    if calibrate_method is None:
        cal = recipe.calibration
    elif isinstance(calibrate_method, str):
        cal = Calibration(calibrate_method)
    else:
        cal = calibrate_method
    src, dst = Path(src), Path(dst)
    layers = conv_layers(src)
    kept = recipe.kept(layers)
    unknown = set(recipe.keep_layers) - {layer.name for layer in layers}
    if unknown:
        raise InvalidInputError(f"recipe '{recipe.label()}' keeps layer(s) not in {src.name}: {sorted(unknown)[:3]}; "
                                "use keep_roles for recipes meant to travel between graphs", param="recipe")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sambert-int8-") as tmp:
        # ORT writes augmented graphs during calibration; keep them in a temp dir, not beside ours.
        cache = Path(calibration_cache) if calibration_cache is not None else Path(tmp) / "cache.json"
        _calibrate(src, feeds, cal, cache, Path(tmp))
        quantize_static(
            str(src), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(CONV_OPS), per_channel=True, reduce_range=False,
            activation_type=QuantType.QInt8 if recipe.symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(kept), calibrate_method=_ort_method(cal.method),
            calibration_providers=["CPUExecutionProvider"],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": recipe.symmetric,
                           "CalibTensorRangeSymmetric": False},
            calibration_cache_path=str(cache))
    quantized = tuple(layer.name for layer in layers if layer.name not in kept)
    return QuantizeReport(recipe, quantized, tuple(sorted(kept)), len(feeds), cal)
