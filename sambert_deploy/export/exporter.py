"""One generic exporter for every :class:`GraphSpec`, a graph audit, and the per-graph parity gate."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from ..gates import Comparator
from ..runtime.manifest import GateFailure, GraphProblem
from .graphs import GraphSpec
from .rewrite import optimize_graph

log = logging.getLogger(__name__)

DYNAMIC_AXES = frozenset({"batch", "num_units", "num_steps", "x_window", "x_window_plus_one", "h_window", "num_frames",
                          "num_samples"})


@dataclass
class ExportedGraph:
    spec: GraphSpec
    path: Path
    seconds: float


def export_graph(spec: GraphSpec, model: nn.Module, path: Path, metadata: dict[str, str], opset: int | None = None,
                 seed: int = 0) -> ExportedGraph:
    """Trace ``spec`` on ``model`` at its trace sizes and write ONNX with dynamic axes + metadata."""
    import onnx

    t0 = time.perf_counter()
    wrapper = spec.build(model).eval()
    rng = np.random.default_rng(seed)
    feeds = spec.make_inputs(model, spec.trace_sizes, rng)
    args = tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
    dynamic: dict[str, dict[int, str]] = {}
    for t in (*spec.inputs, *spec.outputs):
        axes = {i: a for i, a in enumerate(t.axes) if isinstance(a, str) and a in DYNAMIC_AXES}
        if axes:
            dynamic[t.name] = axes
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript and
        # cannot yet express our masked window shapes without graph breaks; its output is identical ONNX.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=opset or spec.opset,
                              input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                              dynamic_axes=dynamic, do_constant_folding=True)
    with torch.no_grad():
        traced_out = wrapper(*args)
    traced_out = traced_out if isinstance(traced_out, tuple) else (traced_out,)
    proto = onnx.load(str(path))
    _stamp_output_shapes(proto, spec, [tuple(o.shape) for o in traced_out])
    for k, v in {**metadata, "graph": spec.name}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    stats = optimize_graph(path)
    log.debug("%s: %s", spec.name, stats)
    return ExportedGraph(spec, path, time.perf_counter() - t0)


def _stamp_output_shapes(proto, spec: GraphSpec, traced: list[tuple[int, ...]]) -> None:  # noqa: ANN001
    """Write the declared output shapes into the graph: the TorchScript exporter leaves many output dims
    as anonymous symbols. Dynamic axes get their semantic name, fixed axes the traced size; the audit's
    strict shape inference then proves the stamp consistent with the graph."""
    by_name = {o.name: o for o in proto.graph.output}
    for t, shape in zip(spec.outputs, traced, strict=True):
        if len(shape) != len(t.axes):
            raise ExportError(f"{spec.name}.{t.name}: traced rank {len(shape)} != declared {t.axes}")
        dims = by_name[t.name].type.tensor_type.shape.dim
        for d, a, n in zip(dims, t.axes, shape, strict=True):
            if isinstance(a, str) and a in DYNAMIC_AXES:
                d.ClearField("dim_value")
                d.dim_param = a
            else:
                if isinstance(a, int) and a != n:
                    raise ExportError(f"{spec.name}.{t.name}: traced size {n} != declared {a}")
                d.ClearField("dim_param")
                d.dim_value = int(n)


def audit_graph(spec: GraphSpec, path: Path) -> list[GateFailure]:
    """onnx.checker, shape inference, no undeclared symbolic output dims, no declared axis naming no tensor."""
    import onnx

    problems: list[str] = []
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as e:
        problems.append(f"{spec.name}: ONNX checker/shape inference failed: {str(e).splitlines()[0]}")
        return [GraphProblem("audit", spec.name, p) for p in problems]
    declared = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    seen_names = {v.name for v in (*inferred.graph.input, *inferred.graph.output)}
    for name in declared:
        if name not in seen_names:
            problems.append(f"{spec.name}: declared tensor '{name}' is not in the graph")
    for vi in (*inferred.graph.input, *inferred.graph.output):
        spec_t = declared.get(vi.name)
        if spec_t is None:
            problems.append(f"{spec.name}: graph has undeclared tensor '{vi.name}'")
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(spec_t.axes):
            problems.append(f"{spec.name}.{vi.name}: rank {len(dims)} but declared {spec_t.axes}")
            continue
        for i, (d, a) in enumerate(zip(dims, spec_t.axes, strict=True)):
            dynamic = isinstance(a, str) and a in DYNAMIC_AXES
            if d.HasField("dim_param"):
                if not dynamic or d.dim_param != a:
                    problems.append(f"{spec.name}.{vi.name} axis {i}: symbolic '{d.dim_param}' but declared {a!r}")
            elif dynamic:
                problems.append(f"{spec.name}.{vi.name} axis {i}: declared dynamic '{a}' but fixed {d.dim_value}")
            elif isinstance(a, int) and d.dim_value != a:
                problems.append(f"{spec.name}.{vi.name} axis {i}: size {d.dim_value} but declared {a}")
    used = {a for t in declared.values() for a in t.axes if isinstance(a, str) and a in DYNAMIC_AXES}
    for a in {a for t in spec.inputs for a in t.axes if isinstance(a, str) and a in DYNAMIC_AXES}:
        if a not in used:
            problems.append(f"{spec.name}: declared axis '{a}' names no tensor")
    return [GraphProblem("audit", spec.name, p) for p in problems]


def ort_session(path: Path, threads: int = 1):  # noqa: ANN201 - onnxruntime type
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_graph_parity(spec: GraphSpec, model: nn.Module, path: Path, seed: int = 1) -> list[GateFailure]:
    """Torch vs ONNX Runtime CPU on every ``check_sizes`` entry (sizes never traced): each output's shape,
    then its max-abs against ``spec.atol + spec.rtol * max|torch|``. Returns every failure, typed."""
    wrapper = spec.build(model).eval()
    sess = ort_session(path)
    rng = np.random.default_rng(seed)
    comp = Comparator()
    for sizes in spec.check_sizes:
        case = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "fixed sizes"
        feeds = spec.make_inputs(model, sizes, rng)
        with torch.no_grad():
            ref = wrapper(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
        ref = ref if isinstance(ref, tuple) else (ref,)
        try:
            got = sess.run([t.name for t in spec.outputs], feeds)
        except Exception as e:
            comp.error(case, spec.name, f"ONNX Runtime failed: {str(e).splitlines()[0]}")
            continue
        for t, r, g in zip(spec.outputs, ref, got, strict=True):
            comp.allclose(case, f"{spec.name}.{t.name}", g, r.numpy(), spec.atol, spec.rtol)
    return comp.failures
