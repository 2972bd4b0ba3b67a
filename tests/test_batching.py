"""Decoder steps of several streams as one call: the scheduler's task groups, the padded batch, and
streams that share calls against the same streams run alone."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sambert_deploy.runtime.backends import OrtBackend
from sambert_deploy.runtime.batching import MASK_VALUE, StepInput, run_steps
from sambert_deploy.runtime.chunking import Window
from sambert_deploy.runtime.manifest import read_manifest
from sambert_deploy.runtime.scheduler import Scheduler, Task
from sambert_deploy.runtime.synthesizer import StreamOptions, Synthesizer
from sambert_deploy.runtime.vocoder import Vocoder

from .test_runtime import run_start_cancel_plan, symbol_units, workers_alive

# -- the scheduler's groups (no graphs, no timing) ------------------------------------------------


class _Group:
    pulls = True

    def __init__(self, max_batch: int, pull_more: int = 0):
        self.max_batch, self.pull_more = max_batch, pull_more
        self.runs: list[list[str]] = []

    def run(self, tasks: list[Task], pull: Callable[[int], list[Task]],
            report: Callable[[Task, Any, BaseException | None], None]) -> None:
        names = [str(t.payload) for t in tasks]
        if self.pull_more:
            more = pull(self.pull_more)
            names += [str(t.payload) for t in more]
            tasks = tasks + more
        self.runs.append(names)
        for t in tasks:
            report(t, f"done {t.payload}", None)


class _Client:
    """Offers one task (grouped or not) with a fixed deadline, then nothing."""

    def __init__(self, name: str, deadline: float, group: _Group | None, log: list[str], fail: bool = False):
        self.name, self.deadline, self.group, self.log, self.fail_start = name, deadline, group, log, fail
        self.offered = False
        self.result: Any = None

    def offer(self, lane: str) -> Task | None:
        if self.offered:
            return None
        return Task(self, lane, self.deadline, (0, 0), lambda: self.log.append(self.name), self.name, self.group)

    def start(self, task: Task) -> None:
        if self.fail_start:
            raise RuntimeError("bookkeeping bug")
        self.offered = True

    def finish(self, task: Task, result: Any, error: BaseException | None) -> None:
        self.result = result if error is None else error
        self.log.append(f"finish {self.name}")

    def fail(self, error: BaseException) -> None:
        self.result = error

    @property
    def defunct(self) -> bool:
        return self.result is not None


def _run_clients(clients: list[_Client], lanes: int = 1) -> None:
    sched = Scheduler({"cpu": lanes})
    with sched.lock:  # every offer is there before the worker's first pick
        for c in clients:
            sched.add(c, ("cpu",))
    try:
        for _ in range(500):
            if all(c.result is not None for c in clients):
                break
            threading.Event().wait(0.01)
    finally:
        sched.close()


def test_group_takes_ready_tasks_more_urgent_than_anything_outside_it() -> None:
    """The most urgent grouped task runs with the other grouped tasks that beat every ungrouped one,
    up to max_batch; the rest wait their turn (EDF holds across the group)."""
    g = _Group(max_batch=3)
    log: list[str] = []
    clients = [_Client("a", 1.0, g, log), _Client("b", 2.0, g, log), _Client("v", 2.5, None, log),
               _Client("c", 3.0, g, log), _Client("d", 1.5, g, log), _Client("e", 1.7, g, log)]
    _run_clients(clients)
    assert g.runs[0] == ["a", "d", "e"]  # b (2.0) is more urgent than v, but the group is full
    assert g.runs[1] == ["b"]  # v (2.5) is more urgent than c: c may not ride along
    assert log.index("v") < log.index("finish c")
    assert g.runs[2] == ["c"]
    assert all(isinstance(c.result, str) and c.result == f"done {c.name}" if c.group else c.result is None
               for c in clients if c.group)


def test_group_pulls_joiners_and_every_task_is_reported_once() -> None:
    g = _Group(max_batch=8, pull_more=4)
    log: list[str] = []
    clients = [_Client(n, float(i), g, log) for i, n in enumerate("abc")]
    _run_clients(clients)
    assert g.runs == [["a", "b", "c"]] or sum(len(r) for r in g.runs) == 3
    assert sorted(x for x in log if x.startswith("finish")) == ["finish a", "finish b", "finish c"]


def test_a_client_failing_to_start_is_dropped_and_the_group_still_runs() -> None:
    g = _Group(max_batch=4)
    log: list[str] = []
    bad = _Client("bad", 1.5, g, log, fail=True)
    clients = [_Client("a", 1.0, g, log), bad, _Client("b", 2.0, g, log)]
    _run_clients(clients)
    assert isinstance(bad.result, RuntimeError)
    assert g.runs[0] == ["a", "b"]


# -- the padded batch -------------------------------------------------------------------------------


def _step(rng: np.random.Generator, layers: int, heads: int, dh: int, mels: int, dmem: int, wx: int, wh: int,
          past: int, mem_end: int) -> StepInput:
    x_bias = np.zeros((1, wx + 1), np.float32)
    x_bias[0, 1 + past:] = MASK_VALUE
    h_bias = np.zeros((1, wh), np.float32)
    h_bias[0, mem_end:] = MASK_VALUE

    def f(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    return StepInput(f(1, 1, mels), f(1, 1, dmem), f(1, layers, heads, wx, dh), f(1, layers, heads, wx, dh), x_bias,
                     f(1, layers, heads, wh, dh), f(1, layers, heads, wh, dh), h_bias, validate=True)


def test_batched_rows_equal_each_stream_alone(tiny_bundles: dict[str, Path]) -> None:
    """Streams with different window widths in one call: each row is the stream's own step (padding
    slots are masked to exactly zero weight), to float reassociation at most."""
    m = read_manifest(tiny_bundles["causal"])
    voice = m.voice(None)
    a = voice.acoustic
    rng = np.random.default_rng(7)
    with OrtBackend(m.graph_path(voice, "decoder_step")) as dec:
        steps = [_step(rng, a.decoder_layers, a.decoder_heads, a.decoder_head_dim, a.num_mels, a.d_mem, wx, wh, p, e)
                 for wx, wh, p, e in ((1, 2, 0, 2), (5, 6, 3, 4), (3, 4, 3, 1), (9, 10, 9, 10), (2, 3, 1, 3))]
        together = run_steps(dec, steps)
        alone = [run_steps(dec, [s])[0] for s in steps]
    for s, t, one in zip(steps, together, alone, strict=True):
        assert t.x_k.shape == s.x_k.shape == one.x_k.shape
        for got, want in ((t.frames, one.frames), (t.x_k, one.x_k), (t.x_v, one.x_v)):
            assert np.abs(got - want).max() <= 1e-6 * max(1.0, float(np.abs(want).max()))


# -- streams that share decoder calls -----------------------------------------------------------------


SMALL = StreamOptions(postnet_chunk=6, vocoder_chunk=8, first_chunk=3)


def streams_at_once(syn: Synthesizer, reqs: list[dict[str, Any]]) -> list[np.ndarray | None]:
    """Every request streamed from its own thread, all released together; each stream's audio."""
    out: list[np.ndarray | None] = [None] * len(reqs)
    go = threading.Barrier(len(reqs))

    def run(i: int) -> None:
        go.wait()
        out[i] = np.concatenate([c.samples for c in syn.stream(**reqs[i])])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def assert_each_equals_alone(out: list[np.ndarray | None], alone: list[np.ndarray]) -> None:
    for want, got in zip(alone, out, strict=True):
        assert got is not None and got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-5


def test_streams_sharing_decoder_calls_equal_each_stream_alone(tiny_bundles: dict[str, Path]) -> None:
    """Six streams of one voice at once on one CPU worker (so their decoder steps share calls) against
    each run alone: the audio agrees within 1e-5 (bit-exact where the batch needed no padding)."""
    reqs = [dict(symbols=symbol_units(20 + 9 * i, 1 + i % 3), speed=(0.8, 1.0, 1.3)[i % 3]) for i in range(6)]
    with Synthesizer(tiny_bundles["causal"], backend="cpu", threads=1, options=SMALL) as syn:
        alone = [syn.synthesize(**r) for r in reqs]
        solo_act = syn.activity()
    assert solo_act.decoder_steps == solo_act.decoder_calls > 0  # one stream at a time: no batch
    with Synthesizer(tiny_bundles["causal"], backend="cpu", threads=1, options=SMALL) as syn:
        out = streams_at_once(syn, reqs)
        act = syn.activity()
    assert act.decoder_steps == solo_act.decoder_steps  # the same steps ...
    assert act.decoder_calls < act.decoder_steps  # ... in fewer calls
    assert_each_equals_alone(out, alone)
    assert workers_alive() == []


@pytest.mark.parametrize("n", [2, 5])
def test_cancelling_one_stream_leaves_the_batch_at_once(tiny_bundles: dict[str, Path], n: int) -> None:
    """A stream cancelled while its steps share calls with others stops; the others finish exactly
    as they would alone."""
    reqs = [dict(symbols=symbol_units(40 + 5 * i, 2)) for i in range(n)]
    with Synthesizer(tiny_bundles["causal"], backend="cpu", threads=1, options=SMALL) as syn:
        alone = [syn.synthesize(**r) for r in reqs]
        streams = [syn.stream(**r) for r in reqs]
        first = next(iter(streams[0]))
        assert first.samples.size
        streams[0].cancel()
        got = [np.concatenate([c.samples for c in s]) for s in streams[1:]]
        assert streams[0].info.state == "cancelled"
    for want, g in zip(alone[1:], got, strict=True):
        assert g.shape == want.shape and float(np.abs(g - want).max()) <= 1e-5


# -- bundles exported before the batch axis ------------------------------------------------------------


def _legacy_bundle(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose decoder step is in the layout of bundles exported before the batch axis
    (rank-4 windows oldest first, rank-1 biases), computing the same step."""
    import shutil

    import torch

    from sambert_deploy.export.graphs import GRAPHS_BY_NAME
    from sambert_deploy.models.loading import load_sambert
    from sambert_deploy.utils import file_sha256

    from .conftest import fixture_set

    class Legacy(torch.nn.Module):
        def __init__(self, step: torch.nn.Module):
            super().__init__()
            self.step = step

        def forward(self, prev, memory_i, x_k, x_v, x_bias, h_k, h_v, h_bias):  # noqa: ANN001, ANN202
            f, k, v = self.step(prev, memory_i, x_k.flip(2)[None], x_v.flip(2)[None], x_bias.flip(0)[None],
                                h_k[None], h_v[None], h_bias[None])
            return f, k[0].flip(2), v[0].flip(2)

    shutil.copytree(src, dst)
    tiny = fixture_set("tiny")
    am, _ = load_sambert(tiny / "am/config.yaml", tiny / "am/ckpt/checkpoint_0.pth")
    step = GRAPHS_BY_NAME["decoder_step"].build(am).eval()
    man = json.loads((dst / "manifest.json").read_text())
    (name, voice), = man["voices"].items()
    a = voice["acoustic"]
    layers, heads, dh = a["decoder_layers"], a["decoder_heads"], a["decoder_head_dim"]
    args = (torch.zeros(1, 1, a["num_mels"]), torch.zeros(1, 1, a["d_mem"]), torch.zeros(layers, heads, 3, dh),
            torch.zeros(layers, heads, 3, dh), torch.zeros(4), torch.zeros(layers, heads, 4, dh),
            torch.zeros(layers, heads, 4, dh), torch.zeros(4))
    path = dst / voice["folder"] / "decoder_step.onnx"
    win = {"x_k": {2: "x_window"}, "x_v": {2: "x_window"}, "x_bias": {0: "x_window_plus_one"},
           "h_k": {2: "h_window"}, "h_v": {2: "h_window"}, "h_bias": {0: "h_window"},
           "x_k_out": {2: "x_window"}, "x_v_out": {2: "x_window"}}
    with torch.no_grad():
        torch.onnx.export(Legacy(step), args, str(path), dynamo=False, opset_version=17,
                          input_names=["prev", "memory_i", "x_k", "x_v", "x_bias", "h_k", "h_v", "h_bias"],
                          output_names=["frames", "x_k_out", "x_v_out"], dynamic_axes=win)
    g = voice["graphs"]["decoder_step"]
    g["sha256"] = file_sha256(path)
    for t in (*g["inputs"], *g["outputs"]):
        t["axes"] = [x for x in t["axes"] if x != "batch"]
        if t["name"] in ("prev", "memory_i", "frames"):
            t["axes"] = [1, *t["axes"]]
    (dst / "manifest.json").write_text(json.dumps(man))
    assert name
    return dst


def test_bundle_without_batch_axis_still_runs(tiny_bundles: dict[str, Path], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A bundle exported before the decoder step had its batch axis runs one call per stream and says
    the same, alone and with streams at once; loading it says how to get batches."""
    old = _legacy_bundle(tiny_bundles["causal"], tmp_path / "old")
    reqs = [dict(symbols=symbol_units(25 + 7 * i, 1 + i)) for i in range(3)]
    with Synthesizer(tiny_bundles["causal"], backend="cpu", options=SMALL) as syn:
        want = [syn.synthesize(**r) for r in reqs]
    with Synthesizer(old, backend="cpu", threads=1, options=SMALL) as syn:
        streams = [syn.stream(**r) for r in reqs]
        got = [np.concatenate([c.samples for c in s]) for s in streams]
        act = syn.activity()
    assert act.decoder_calls == act.decoder_steps > 0
    assert any("re-export the bundle" in r.getMessage() for r in caplog.records)
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape and float(np.abs(g - w).max()) <= 1e-5


def _hold(sched: Scheduler, clients: list[_Client], late: list[_Client], added: threading.Event) -> None:
    """Add ``clients`` at once, then ``late`` (at once) once the first group call has started; wait."""
    with sched.lock:
        for c in clients:
            sched.add(c, ("cpu",))
    try:
        for _ in range(500):
            if any(c.offered for c in clients if c.group is not None):
                break
            threading.Event().wait(0.01)
        with sched.lock:
            for c in late:
                sched.add(c, ("cpu",))
        added.set()
        for _ in range(1000):
            if all(c.result is not None for c in (*clients, *late)):
                break
            threading.Event().wait(0.01)
    finally:
        sched.close()


def test_a_running_group_takes_tasks_offered_meanwhile() -> None:
    """While a group runs on one worker and a free worker has other work, the group's tasks offered
    meanwhile go to the running call (pulled between its steps), not to a second call, even when
    they are more urgent than that other work."""
    added, pulled = threading.Event(), threading.Event()
    log: list[str] = []

    class Waiting(_Group):
        def run(self, tasks: list[Task], pull: Callable[[int], list[Task]],
                report: Callable[[Task, Any, BaseException | None], None]) -> None:
            if not self.runs:
                assert added.wait(10)
                threading.Event().wait(0.2)  # the other worker is free to pick "late" if it were allowed
                tasks = tasks + pull(4)
                pulled.set()
            self.runs.append([str(t.payload) for t in tasks])
            for t in tasks:
                report(t, "done", None)

    g = Waiting(max_batch=8)
    other = _Client("other", 0.5, None, log)
    other_fn = other.offer

    def offer(lane: str) -> Task | None:  # the ungrouped task keeps its worker busy until the pull
        task = other_fn(lane)
        if task is not None:
            task.fn = lambda: pulled.wait(10)
        return task

    other.offer = offer  # type: ignore[method-assign]
    late, filler = _Client("late", 2.0, g, log), _Client("filler", 3.0, None, log)
    filler_fn = filler.offer

    def offer_filler(lane: str) -> Task | None:
        task = filler_fn(lane)
        if task is not None:
            task.fn = lambda: log.append("filler") or pulled.wait(10)
        return task

    filler.offer = offer_filler  # type: ignore[method-assign]
    _hold(Scheduler({"cpu": 3}), [other, _Client("first", 1.0, g, log)], [late, filler], added)
    assert g.runs == [["first", "late"]]
    assert log.index("filler") < log.index("finish first")


def test_an_idle_worker_runs_a_second_call_of_a_running_group() -> None:
    """A worker with nothing else to do runs the group's other ready tasks itself (an idle core
    costs more than a smaller batch: 8 streams on 2 cores, 12.1-12.5 -> 13.3-13.5 audio s/s)."""
    added, second = threading.Event(), threading.Event()

    class Blocking(_Group):
        def run(self, tasks: list[Task], pull: Callable[[int], list[Task]],
                report: Callable[[Task, Any, BaseException | None], None]) -> None:
            names = [str(t.payload) for t in tasks]
            if names == ["first"]:
                assert added.wait(10)
                second.wait(10)  # the other worker must start "late" while this call runs
            else:
                second.set()
            self.runs.append(names)
            for t in tasks:
                report(t, "done", None)

    g = Blocking(max_batch=8)
    log: list[str] = []
    _hold(Scheduler({"cpu": 2}), [_Client("first", 1.0, g, log)], [_Client("late", 2.0, g, log)], added)
    assert second.is_set() and g.runs == [["late"], ["first"]]


def test_a_group_that_never_pulls_leaves_its_tasks_to_other_workers() -> None:
    """A group whose call takes no joiners (a vocoder call: no steps) cannot take the tasks offered
    while it runs: another worker runs them in their EDF order, not after less urgent work."""
    added, second = threading.Event(), threading.Event()
    log: list[str] = []

    class OneCall(_Group):
        pulls = False

        def run(self, tasks: list[Task], pull: Callable[[int], list[Task]],
                report: Callable[[Task, Any, BaseException | None], None]) -> None:
            names = [str(t.payload) for t in tasks]
            if names == ["first"]:
                assert added.wait(10)
                second.wait(2)  # the other worker should start "late" while this call runs
            else:
                log.append(f"run {' '.join(names)}")
                second.set()
            self.runs.append(names)
            for t in tasks:
                report(t, "done", None)

    g = OneCall(max_batch=8)
    late, filler = _Client("late", 2.0, g, log), _Client("filler", 3.0, None, log)
    _hold(Scheduler({"cpu": 2}), [_Client("first", 1.0, g, log)], [late, filler], added)
    assert log.index("run late") < log.index("filler"), log
    assert g.runs == [["late"], ["first"]]


def test_no_batches_where_each_shape_compiles(tiny_bundles: dict[str, Path]) -> None:
    """On a backend that compiles per input shape (OpenVINO), batches would mean a compilation per
    batch and window combination: the acoustic model and the vocoder keep one call per stream there."""
    from .conftest import need_module

    need_module("openvino", "pip install 'sambert-deploy[openvino]'")
    batches = []
    for am in ("openvino", "cpu"):
        with Synthesizer(tiny_bundles["causal"], am_backend=am, voc_backend=am, precision="fp32", decoder_batch=8,
                         vocoder_batch=4) as syn:
            syn.load(text=False)
            (opened,) = syn.opened().values()
            batches.append((opened.am_backend, opened.decoder_batch, opened.voc_backend, opened.vocoder_batch))
    assert batches == [("openvino", 1, "openvino", 1), ("cpu", 8, "cpu", 4)]


# -- vocoder windows of several streams as one call -------------------------------------------------------


def test_batched_vocoder_windows_equal_each_window_alone(tiny_bundles: dict[str, Path]) -> None:
    """Windows of different lengths in one call of the vocoder's batch axis (each padded at its end):
    every window's audio equals its own call, to float reassociation."""
    m = read_manifest(tiny_bundles["causal"])
    voice = m.voice(None)
    rng = np.random.default_rng(3)
    mels = voice.vocoder.in_channels
    wins = [Window(rng.standard_normal((n, mels)).astype(np.float32), a, n, 0, False)
            for n, a in ((1, 0), (7, 3), (40, 5), (13, 13 - 2), (40, 0))]
    voc = Vocoder(m, voice, "cpu", max_batch=4)
    try:
        assert voc.max_batch == 4
        # the call runs at a shape bucket (32, 64, ...), not at its longest window's 40 frames
        assert [voc.bucket(n) for n in (1, 32, 33, 40, 65)] == [32, 32, 64, 64, 96]
        together = voc.windows(wins)
        alone = [voc.window(w) for w in wins]
    finally:
        voc.close()
    for t, one, w in zip(together, alone, wins, strict=True):
        assert t.shape == one.shape == (w.rows * voice.vocoder.hop,)
        assert float(np.abs(t - one).max()) <= 1e-6


def test_vocoder_batches_only_where_padding_and_shapes_allow(tiny_bundles: dict[str, Path], tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A non-causal vocoder would hear a window's padding, and a graph exported before the batch axis
    takes one window: both run one window per call, whatever was asked, and the load says why."""
    caplog.set_level(logging.INFO, logger="sambert_deploy")
    nc = read_manifest(tiny_bundles["noncausal"])
    voc = Vocoder(nc, nc.voice(None), "cpu", max_batch=4)
    try:
        assert voc.max_batch == 1
        with pytest.raises(ValueError, match="cannot run windows as one call"):
            voc.windows([Window(np.zeros((4, nc.voice(None).vocoder.in_channels), np.float32), 0, 4, 0, False)] * 2)
    finally:
        voc.close()
    old = _batch_one_vocoder(tiny_bundles["causal"], tmp_path / "old")
    for bundle in (tiny_bundles["noncausal"], old):
        with Synthesizer(bundle, backend="cpu", vocoder_batch=4, options=SMALL) as syn:
            syn.load(text=False)
            (opened,) = syn.opened().values()
            assert opened.vocoder_batch == 1
            assert syn.synthesize(symbols=symbol_units(20, 1)).size
            assert syn.activity().vocoder_calls == 0  # no batched call was made
    said = [r.getMessage() for r in caplog.records if "vocoder windows run one per call" in r.getMessage()]
    assert any("non-causal" in m for m in said) and any("re-export the bundle" in m for m in said), said


def _batch_one_vocoder(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose vocoder graph has batch 1, as bundles exported before the batch axis."""
    import shutil

    import onnx

    from sambert_deploy.utils import file_sha256

    shutil.copytree(src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    (voice,) = man["voices"].values()
    path = dst / voice["folder"] / voice["graphs"]["vocoder"]["file"]
    model = onnx.load(str(path))
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    g = voice["graphs"]["vocoder"]
    g["sha256"] = file_sha256(path)
    for t in (*g["inputs"], *g["outputs"]):
        t["axes"] = [1, *t["axes"][1:]]
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


def test_streams_sharing_vocoder_calls_equal_each_stream_alone(tiny_bundles: dict[str, Path]) -> None:
    """Streams of one voice at once with ``vocoder_batch``: their windows share calls (fewer calls than
    windows) and every stream's audio equals the stream alone within 1e-5."""
    reqs = [dict(symbols=symbol_units(20 + 9 * i, 1 + i % 3)) for i in range(5)]
    with Synthesizer(tiny_bundles["causal"], backend="cpu", threads=1, options=SMALL) as syn:
        alone = [syn.synthesize(**r) for r in reqs]
        assert syn.activity().vocoder_calls == 0  # not asked: one window per call, no group
    with Synthesizer(tiny_bundles["causal"], backend="cpu", threads=1, options=SMALL, vocoder_batch=4) as syn:
        syn.load(text=False)
        assert [o.vocoder_batch for o in syn.opened().values()] == [4]
        out = streams_at_once(syn, reqs)
        act = syn.activity()
    assert 0 < act.vocoder_calls < act.vocoder_windows
    assert_each_equals_alone(out, alone)
    assert workers_alive() == []


def test_vocoder_group_reports_every_window_once_whatever_happens() -> None:
    """Cancelled before the call: that stream's window leaves with StreamCancelledError and the others run;
    a call that raises fails every window in it; a task that carries no window is a TypeError; each task
    is reported exactly once, with (audio, an equal share of the call's seconds)."""
    from sambert_deploy.errors import StreamCancelledError
    from sambert_deploy.runtime.backends import CancelToken
    from sambert_deploy.runtime.batching import VocoderGroup

    class FakeVocoder:
        def __init__(self, fail: bool = False):
            self.fail, self.calls = fail, []

        def windows(self, wins: list[Window], token: Any = None, validate: bool = False) -> list[np.ndarray]:
            self.calls.append(len(wins))
            if self.fail:
                raise RuntimeError("device lost")
            return [np.full(w.rows, float(w.a)) for w in wins]

    class Work:
        def __init__(self, a: int, cancelled: bool = False):
            self.window = Window(np.zeros((4, 2), np.float32), a, 4, 0, False)
            self.token, self.validate = CancelToken(), False
            if cancelled:
                self.token.cancel()

    def got_one(got: list[tuple[Task, Any, BaseException | None]]) -> Callable[..., None]:
        return lambda t, r, e: got.append((t, r, e))

    def tasks(*works: object) -> list[Task]:
        return [Task(None, "cpu", float(i), (0, i), lambda: None, w) for i, w in enumerate(works)]  # type: ignore[arg-type]

    for fail in (False, True):
        voc = FakeVocoder(fail)
        group = VocoderGroup(voc, max_batch=4)  # type: ignore[arg-type]
        got: list[tuple[Task, Any, BaseException | None]] = []
        ts = tasks(Work(1), Work(2, cancelled=True), "not a window", Work(3))
        group.run(ts, lambda n: [], got_one(got))
        assert sorted(id(t) for t, _, _ in got) == sorted(id(t) for t in ts)  # each task once
        by = {id(t): (r, e) for t, r, e in got}
        assert isinstance(by[id(ts[1])][1], StreamCancelledError) and isinstance(by[id(ts[2])][1], TypeError)
        assert voc.calls == [2]  # the live windows, as one call
        for t, a in ((ts[0], 1), (ts[3], 3)):
            r, e = by[id(t)]
            if fail:
                assert isinstance(e, RuntimeError) and r is None
            else:
                assert e is None and r[0].tolist() == [float(a)] * (4 - a) and r[1] >= 0
        assert group.counts() == ((0, 0) if fail else (1, 2))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(0, 10)), st.booleans()),
                     min_size=2, max_size=6))
def test_stress_start_and_cancel_sharing_decoder_calls(tiny_bundles: dict[str, Path],
                                                       plan: list[tuple[int, int | None, bool]]) -> None:
    """Streams of one voice on one worker (their decoder steps share calls), started from threads and
    cancelled at random chunks, dropped, or read to the end: the ones read to the end agree with the
    stream alone within 1e-5, no exception is lost, no thread is left."""
    reqs = [dict(symbols=symbol_units(18 + 11 * k, 1 + k % 3)) for k in range(4)]
    syn = Synthesizer(tiny_bundles["causal"], backend="cpu", threads=1, options=SMALL, vocoder_batch=3)
    refs = {k: syn.synthesize(**reqs[k]) for k in {p[0] for p in plan}}
    errors = run_start_cancel_plan(syn, reqs, refs, plan, atol=1e-5)
    for _ in range(500):  # cancelled and dropped streams leave, and their calls in flight end, on their own
        act = syn.activity()
        if act.streams == 0 and act.busy["cpu"] == 0:
            break
        threading.Event().wait(0.01)
    syn.close()
    assert not errors, errors
    assert act.streams == 0 and act.busy["cpu"] == 0
    assert workers_alive() == []
