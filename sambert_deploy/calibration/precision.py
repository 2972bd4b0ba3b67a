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
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError

log = logging.getLogger(__name__)

ROLES = ("pre", "up", "res", "post")
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

    @property
    def tag(self) -> str:
        """``role@stage``, the form :class:`Int8Recipe` entries are matched against."""
        return f"{self.role}@{self.stage}"


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

    def fed_by_upsampler(node) -> bool:  # noqa: ANN001
        # Walk back through shape-preserving ops to find a Resize/Upsample (KAN-TTS repeat upsampler).
        seen, todo = 0, [node.input[0]]
        while todo and seen < 8:
            p = producer.get(todo.pop())
            seen += 1
            if p is None:
                continue
            if p.op_type in ("Resize", "Upsample"):
                return True
            if p.op_type in ("Pad", "Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "LeakyRelu"):
                todo.append(p.input[0])
        return False

    out: list[ConvLayer] = []
    stage = 0
    last = len(convs) - 1
    for i, n in enumerate(convs):
        if i == 0:
            role = "pre"
        elif i == last:
            role = "post"
        elif n.op_type == "ConvTranspose" or fed_by_upsampler(n):
            role = "up"
        else:
            role = "res"
        out.append(ConvLayer(n.name, n.op_type, role, stage))
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
        dims = [d.dim_value if d.HasField("dim_value") else 64 for d in inp.type.tensor_type.shape.dim]
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


@dataclass(frozen=True)
class Int8Recipe:
    """Which conv layers stay FP32. ``keep_roles`` entries are ``role`` (any stage), ``role@stage``
    or ``*@stage`` (every conv of that stage), so a recipe tuned on one HiFiGAN applies to another;
    ``keep_layers`` are exact node names (not portable: for sweeps)."""

    keep_roles: tuple[str, ...] = ()
    keep_layers: tuple[str, ...] = ()
    name: str = ""
    # Symmetric int8 activations (zero point 0) instead of asymmetric uint8: TensorRT's explicit
    # quantization takes only these; ONNX Runtime and OpenVINO run both.
    symmetric: bool = False

    def kept(self, layers: Iterable[ConvLayer]) -> set[str]:
        """Names of the nodes this recipe keeps FP32."""
        keep: set[str] = set()
        for layer in layers:
            for entry in self.keep_roles:
                role, _, stage = entry.partition("@")
                if role not in ("*", "", layer.role):
                    continue
                if stage and int(stage) != layer.stage:
                    continue
                keep.add(layer.name)
            if layer.name in self.keep_layers:
                keep.add(layer.name)
        return keep

    def label(self) -> str:
        if self.name:
            return self.name + (", symmetric int8 activations" if self.symmetric else "")
        parts = list(self.keep_roles) + ([f"{len(self.keep_layers)} layers"] if self.keep_layers else [])
        label = "keep " + "+".join(parts) if parts else "all int8"
        return label + (", symmetric int8 activations" if self.symmetric else "")


# Chosen by scripts/quality.py --sweep on the universal HiFiGAN V1 with real speech (docs/quality.md):
# only the stage-1/2 residual convs INT8 (36 of 78 convs, the bulk of the FLOPs after stage 2).
# Measured vs FP32: log-mel L1 0.078 nats (quiet 0.081), PESQ vs FP32 4.43, PESQ vs recording
# 2.85/2.83 (ORT/OpenVINO) vs FP32's 2.88; RTF 1 thread ORT 0.386 vs FP32 0.666. Per-layer
# sensitivity is ~0.004-0.03 nats per stage-1/2 conv but 0.04-0.77 for stage 4, up@3 and conv_post.
# Strictly fastest passing was "keep pre+post+stage3-4" (0.143 nats, ORT 1t RTF 0.382): same speed
# within this machine's ±20% timing noise but 0.007 nats from the 0.15 gate, too thin for other CPUs'
# int8 kernels; whole-graph INT8 is 0.99 nats (destroyed).
DEFAULT_INT8 = Int8Recipe(keep_roles=("pre", "post", "up", "*@3", "*@4"), name="int8 res@1-2 only")


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_int8` did."""

    recipe: Int8Recipe
    quantized: tuple[str, ...]
    kept_fp32: tuple[str, ...]
    calibration_feeds: int
    calibrate_method: str = "minmax"
    notes: tuple[str, ...] = field(default_factory=tuple)


class _Reader:
    """ORT CalibrationDataReader over a list of feeds; each feed may have its own num_frames (MinMax
    and the histogram calibrators reduce per run, so shapes need not match)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


_METHODS = ("minmax", "percentile", "entropy")


def quantize_int8(src: Path, dst: Path, calibration: Iterable[dict[str, np.ndarray]],
                  recipe: Int8Recipe = DEFAULT_INT8, *, calibrate_method: str = "minmax",
                  calibration_cache: Path | None = None) -> QuantizeReport:
    """Static INT8 (Q/DQ) of every conv ``recipe`` does not keep FP32, activations calibrated on
    ``calibration`` (dicts of graph inputs, e.g. ``{"mel": f32 [1,80,F]}``, F may differ per feed).

    ``calibration_cache`` (a JSON file) stores the activation ranges: a sweep that quantizes the same
    graph many ways with the same feeds calibrates once.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    feeds = [{k: np.ascontiguousarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
              for k, v in f.items()} for f in calibration]
    if not feeds:
        raise InvalidInputError("INT8 calibration needs at least one input feed (e.g. {'mel': f32 [1,80,F]} from "
                                "real speech); an empty calibration set would leave every activation range unknown",
                                param="calibration")
    if calibrate_method not in _METHODS:
        raise InvalidInputError(f"calibrate_method '{calibrate_method}' is unknown; choose one of {', '.join(_METHODS)}",
                                param="calibrate_method")
    src, dst = Path(src), Path(dst)
    layers = conv_layers(src)
    kept = recipe.kept(layers)
    unknown = set(recipe.keep_layers) - {layer.name for layer in layers}
    if unknown:
        raise InvalidInputError(f"recipe '{recipe.label()}' keeps layer(s) not in {src.name}: {sorted(unknown)[:3]}; "
                                "use keep_roles for recipes meant to travel between graphs", param="recipe")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calibrate_method]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sambert-int8-") as tmp:
        # quantize_static writes an augmented copy next to nothing of ours; keep it in a temp dir.
        quantize_static(
            str(src), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(CONV_OPS), per_channel=True, reduce_range=False,
            activation_type=QuantType.QInt8 if recipe.symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(kept), calibrate_method=method,
            calibration_providers=["CPUExecutionProvider"],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": recipe.symmetric,
                           "CalibTensorRangeSymmetric": False},
            calibration_cache_path=str(calibration_cache) if calibration_cache is not None else None)
        del tmp
    quantized = tuple(layer.name for layer in layers if layer.name not in kept)
    return QuantizeReport(recipe, quantized, tuple(sorted(kept)), len(feeds), calibrate_method)
