"""Benchmark: N concurrent streams of the same text on one shared Synthesizer.

For each N (default 1, 2, 4) it starts N threads together, each streaming the same text through
one Synthesizer, and prints the aggregate audio seconds per wall second and every stream's first
audio (from its ``stream()`` call, front end included). With ``--baseline-rev REV`` the same
measurement runs on the runtime of that git revision (checked out into a temporary worktree), in
the same run, and the table shows the ratio; ``--baseline-bundle`` gives that revision its own bundle
(the one its ``make demo`` built), where the graphs changed between the two. Every cell is a fresh
process, repeated ``--repeat`` times (median shown; this shared 2-core machine varies by +-20%).
"decoder batch" is the mean number of streams per decoder-step call (``Synthesizer.activity()``);
"busy" the core-seconds the streams' tasks took (``Stream.info``: front end + acoustic model / vocoder).

``--vocoder-batch N`` adds rows of this revision with vocoder windows of up to N streams per call.

    python scripts/bench_concurrency.py [--bundle demo_out/bundle] [--streams 1 2 4] [--baseline-rev e247f92]
        [--baseline-bundle OLD_BUNDLE] [--vocoder-batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXT = ("一个开源的语音合成工具，把声学模型和声码器从训练检查点导出成小而快的部署版本。"
        "我们先把文字转换成音素，再逐步生成梅尔频谱，最后用声码器一块一块地合成音频。"
        "服务端可以让许多请求共用同一个合成器，每个请求都尽快听到第一段声音。")


def run_child(bundle: str, voice: str, streams: int, threads: int, repeat_text: int, vocoder_batch: int = 0) -> dict:
    """In a fresh process (whichever sambert_deploy is first on sys.path): N streams at once."""
    from sambert_deploy.runtime.synthesizer import Synthesizer
    from sambert_deploy.utils import peak_rss_mb

    text = TEXT * repeat_text
    kw: dict = {"threads": threads} if threads else {}
    if vocoder_batch:
        kw["vocoder_batch"] = vocoder_batch
    with Synthesizer(bundle, voice=voice, backend="cpu", **kw) as syn:
        syn.load(voice)
        syn.synthesize("预热。")  # sessions and dictionaries warm, outside the timing
        rate = syn.sample_rate
        firsts: list[float | None] = [None] * streams
        samples = [0] * streams
        busy = [(0.0, 0.0)] * streams
        errors: list[str] = []
        go = threading.Barrier(streams + 1)

        def one(i: int) -> None:
            try:
                go.wait()
                t0 = time.perf_counter()
                stream = syn.stream(text)
                for c in stream:
                    if firsts[i] is None:
                        firsts[i] = time.perf_counter() - t0
                    samples[i] += len(c.samples)
                info = stream.info
                busy[i] = (info.acoustic_busy_s + info.frontend_busy_s, info.vocoder_busy_s)
            except BaseException as e:  # noqa: BLE001 - reported in the table
                errors.append(repr(e))

        workers = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
        for w in workers:
            w.start()
        go.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        wall = time.perf_counter() - t0
        act = syn.activity()
        steps, calls = getattr(act, "decoder_steps", 0), getattr(act, "decoder_calls", 0)  # older runtimes: absent
        opened = syn.opened().get(voice) if hasattr(syn, "opened") else None
    if errors:
        raise RuntimeError(errors[0])
    audio = sum(samples) / rate
    return {"wall": wall, "audio": audio, "per_wall": audio / wall, "firsts": firsts, "rss": peak_rss_mb(),
            "threads_seen": threads or os.cpu_count(), "batch": steps / calls if calls else None,
            "vocoder": f"{opened.voc_backend} {opened.precision}" if opened is not None else "?",
            "busy": [sum(b[0] for b in busy), sum(b[1] for b in busy)]}


def _child(code_root: Path, args: list[str], timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_root))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(code_root))
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1][:100]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _worktree(rev: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="sambert-baseline-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="demo_out/bundle")
    ap.add_argument("--voice", default="demo_emo")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=0, help="CPU budget (0: all CPUs)")
    ap.add_argument("--repeat-text", type=int, default=1, help="the text repeated this many times per stream")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell (median shown)")
    ap.add_argument("--baseline-rev", help="git revision whose runtime is measured the same way, in the same run")
    ap.add_argument("--baseline-bundle", help="the bundle the baseline revision runs (default: --bundle)")
    ap.add_argument("--vocoder-batch", type=int, default=0,
                    help="also this revision with vocoder windows of up to N streams per call (its own rows)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        bundle, voice, n, threads, rep, vb = a.child
        print(json.dumps(run_child(bundle, voice, int(n), int(threads), int(rep), int(vb))))
        return
    bundle = str(Path(a.bundle).resolve())
    base_bundle = str(Path(a.baseline_bundle or a.bundle).resolve())
    for b, flag in ((bundle, "--bundle"), (base_bundle, "--baseline-bundle")):
        if not Path(b, "manifest.json").is_file():
            sys.exit(f"no bundle at {b}: run `make demo` first (or pass {flag})")
    codes: list[tuple[str, Path, str, int]] = []  # (runtime, code, bundle, vocoder batch: 0 default)
    tree = None
    if a.baseline_rev:
        tree = _worktree(a.baseline_rev)
        codes.append((a.baseline_rev, tree, base_bundle, 0))
    codes.append(("this", REPO, bundle, 0))
    if a.vocoder_batch:
        codes.append((f"this, vocoder batch {a.vocoder_batch}", REPO, bundle, a.vocoder_batch))
    try:
        print(f"bundle {a.bundle}, voice {a.voice}, {len(TEXT) * a.repeat_text} characters per stream, CPU budget "
              f"{a.threads or os.cpu_count()}, median of {a.repeat} runs, fresh process each")
        print("| streams | runtime | vocoder | audio s/s (runs) | vs baseline | wall s | first audio s per stream "
              "(median run) | decoder batch | busy core-s am / voc | peak RSS MB |")
        print("|---" * 10 + "|")
        for n in a.streams:
            medians: dict[str, float] = {}
            # Revisions alternate run by run, so a slow spell of this shared machine hits both.
            runs_by: dict[str, list[dict]] = {name: [] for name, *_ in codes}
            for _ in range(a.repeat):
                for name, root, b, vb in codes:
                    runs_by[name].append(_child(root, [b, a.voice, str(n), str(a.threads), str(a.repeat_text), str(vb)],
                                                a.timeout))
            for name, *_ in codes:
                runs = runs_by[name]
                ok = [r for r in runs if "error" not in r]
                if not ok:
                    print(f"| {n} | {name} | | failed: {runs[0]['error']} | | | | | | |", flush=True)
                    continue
                ok.sort(key=lambda r: r["per_wall"])
                mid = ok[len(ok) // 2]
                medians[name] = statistics.median(r["per_wall"] for r in ok)
                base = codes[0][0]
                ratio = f"{medians[name] / medians[base]:.2f}x" if name != base and base in medians else ""
                firsts = ", ".join(f"{f:.3f}" for f in mid["firsts"])
                spread = "/".join(f"{r['per_wall']:.1f}" for r in ok)
                batch = f"{mid['batch']:.2f}" if mid.get("batch") else "-"
                print(f"| {n} | {name} | {mid.get('vocoder', '?')} | {medians[name]:.2f} ({spread}) | {ratio} | "
                      f"{mid['wall']:.1f} | {firsts} | {batch} | {mid['busy'][0]:.1f} / {mid['busy'][1]:.1f} | "
                      f"{mid['rss']:.0f} |", flush=True)
    finally:
        if tree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()
