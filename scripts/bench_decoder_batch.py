"""Benchmark (issue 20, part 1): one batched decoder-step call for B streams against B single calls.

Times the ``decoder_step`` graph of a bundle exported with the batch axis, on ONNX Runtime's CPU EP with
one intra-op thread (as the runtime runs it), at windows of a typical band, for each B: B single calls
(batch 1) and one call of batch B, interleaved, median of ``--repeat`` rounds of ``--steps`` steps. It
also checks that each row of the batched output equals that stream's single call. With
``--old-bundle`` (a bundle exported before the batch axis) its graph's single call is timed beside.
With ``--streams N`` it also runs N streams of different texts at once on one Synthesizer and compares
each stream's audio with the same request run alone (what padding to the batch's widest window does
over whole utterances).

    python scripts/bench_decoder_batch.py [--bundle demo_out/bundle] [--batches 1 2 4 8] [--old-bundle OLD]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sambert_deploy.runtime.backends import BackendOptions, OrtBackend  # noqa: E402
from sambert_deploy.runtime.batching import MASK_VALUE, StepInput, batched, run_steps  # noqa: E402
from sambert_deploy.runtime.manifest import read_manifest  # noqa: E402


def steps_for(voice, n: int, wx: int, wh: int, rng: np.random.Generator) -> list[StepInput]:  # noqa: ANN001
    a = voice.acoustic
    shape = (1, a.decoder_layers, a.decoder_heads)

    def f(*s: int) -> np.ndarray:
        return rng.standard_normal(s).astype(np.float32)

    out = []
    for i in range(n):
        x_bias = np.zeros((1, wx + 1), np.float32)
        x_bias[0, 1 + (wx - i % 3):] = MASK_VALUE
        out.append(StepInput(f(1, 1, a.num_mels), f(1, 1, a.d_mem), f(*shape, wx, a.decoder_head_dim),
                             f(*shape, wx, a.decoder_head_dim), x_bias, f(*shape, wh, a.decoder_head_dim),
                             f(*shape, wh, a.decoder_head_dim), np.zeros((1, wh), np.float32)))
    return out


def timed(fn, steps: int) -> float:  # noqa: ANN001
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("demo_out/bundle"))
    ap.add_argument("--voice", default=None)
    ap.add_argument("--old-bundle", type=Path, help="a bundle exported before the batch axis, timed beside")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--window", type=int, default=8, help="x window (band) in steps; the memory window is +1")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--streams", type=int, default=0, help="also compare N concurrent streams with each alone")
    a = ap.parse_args()
    m = read_manifest(a.bundle)
    voice = m.voice(a.voice)
    opts = BackendOptions(threads=1, extra_session_options={"session.intra_op.allow_spinning": "0"})
    rng = np.random.default_rng(0)
    with OrtBackend(m.graph_path(voice, "decoder_step"), opts) as dec:
        if not batched(dec):
            sys.exit(f"{a.bundle}: its decoder_step has no batch axis (exported before issue 20); re-export it")
        old = None
        if a.old_bundle is not None:
            om = read_manifest(a.old_bundle)
            old = OrtBackend(om.graph_path(om.voice(a.voice), "decoder_step"), opts).open()
            if batched(old):
                sys.exit(f"{a.old_bundle}: its decoder_step already has the batch axis")
        print(f"{a.bundle} voice {voice.name}: decoder step, x window {a.window}, memory window {a.window + 1}, "
              f"1 intra-op thread, median of {a.repeat} rounds of {a.steps} steps (ms per step of all B streams)")
        print("| B | B single calls ms | one batched call ms | per stream ms | speed-up | rows equal |"
              + (" old graph, B calls ms |" if old else ""))
        print("|---" * (6 + (old is not None)) + "|")
        for b in a.batches:
            steps = steps_for(voice, b, a.window, a.window + 1, rng)
            together = run_steps(dec, steps)
            alone = [run_steps(dec, [s])[0] for s in steps]
            worst = max(float(np.abs(t.frames - s.frames).max()) for t, s in zip(together, alone, strict=True))
            singles, batch, olds = [], [], []
            for _ in range(a.repeat):
                singles.append(timed(lambda st=steps: [run_steps(dec, [s]) for s in st], a.steps))
                batch.append(timed(lambda st=steps: run_steps(dec, st), a.steps))
                if old is not None:
                    olds.append(timed(lambda st=steps: [run_steps(old, [s]) for s in st], a.steps))
            s_ms, b_ms = statistics.median(singles), statistics.median(batch)
            row = (f"| {b} | {s_ms:.3f} | {b_ms:.3f} | {b_ms / b:.3f} | {s_ms / b_ms:.2f}x | "
                   f"{'yes' if worst == 0 else f'max |diff| {worst:.1e}'} |")
            print(row + (f" {statistics.median(olds):.3f} |" if old else ""), flush=True)
        if old is not None:
            old.close()
    if a.streams:
        compare_streams(a.bundle, voice.name, a.streams)


TEXTS = ("今天的天气很好，我们一起去公园散步吧。", "请在下一个路口向左转，然后直走三百米。", "这本书讲的是一个年轻人离开家乡的故事。",
         "会议改到明天下午三点，地点不变。", "他说这个问题需要再讨论一下。", "火车在早上七点半准时出发了。")


def compare_streams(bundle: Path, voice: str, n: int) -> None:
    import threading

    from sambert_deploy.runtime.synthesizer import Synthesizer

    texts = [TEXTS[i % len(TEXTS)] * (1 + i // len(TEXTS)) for i in range(n)]
    with Synthesizer(bundle, voice=voice, backend="cpu") as syn:
        alone = [syn.synthesize(t) for t in texts]
        before = syn.activity()
        out: list[np.ndarray | None] = [None] * n
        go = threading.Barrier(n)

        def run(i: int) -> None:
            go.wait()
            out[i] = np.concatenate([c.samples for c in syn.stream(texts[i])])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        act = syn.activity()
    calls, steps = act.decoder_calls - before.decoder_calls, act.decoder_steps - before.decoder_steps
    diffs = [float(np.abs(o - w).max()) if o is not None and o.shape == w.shape else float("inf")
             for o, w in zip(out, alone, strict=True)]
    print(f"\n{n} streams at once against each alone: mean decoder batch {steps / calls:.2f}; audio max |diff| "
          f"per stream: {', '.join(f'{d:.1e}' for d in diffs)} (worst {max(diffs):.1e}; "
          f"{sum(d == 0 for d in diffs)} of {n} bit-exact)")


if __name__ == "__main__":
    main()
