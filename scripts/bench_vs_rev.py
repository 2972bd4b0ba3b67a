"""Speed and memory of this tree's runtime against a baseline revision, on the full-size fixture voice.

    .venv/bin/python scripts/bench_vs_rev.py [--baseline fd2bc0a] [--repeat 3] [--candidate REV]
                                             [--configs auto,fp32@cpu] [--voice full] [--wait-idle 30]

The baseline is checked out into a temporary git worktree (removed at the end); each measurement is a
fresh process of the same .venv python with ``PYTHONPATH`` set to the revision's root (the child checks
that ``sambert_deploy`` comes from there). Per config, ``PRECISION[@BACKEND]`` of the vocoder (``auto``:
the default, INT8 on ONNX Runtime once quantized; ``fp32@cpu``: FP32 on ONNX Runtime; a plain ``fp32``
lets ``backend="auto"`` put it on OpenVINO), one process measures, with the Synthesizer's defaults
otherwise (``threads=0``: every CPU):

* load s: ``Synthesizer(bundle, precision=...)`` + ``load()`` (sessions and the front end's dictionaries)
* first audio s: of a ~300-unit text, after one short warm-up sentence (``StreamInfo.first_audio_s``)
* RTF: ``elapsed_s / audio_s`` of a ~300-unit and a ~1,200-unit text, one stream at a time
* 4 streams audio-s/s: four different ~300-unit texts streamed at once, total audio / wall time
* peak RSS MB: the child's ``ru_maxrss`` (``os.wait4``: that process alone)

Runs alternate revision by revision (A B A B ...) so the machine's drift (±20% on this shared 2-core
box) falls on both; the table shows medians with the min-max spread and the ratio current / baseline.
Before each run it waits (up to ``--wait-idle`` s) for the CPUs to be idle, and after it says how much
of the CPUs other processes took meanwhile (/proc/stat minus the child's own rusage): a run that
shared the machine is visible as such.
Both revisions must also produce the same number of samples for each text (a cheap sanity check; the
bit-exact proof is scripts/check_bitexact.py). The bundle is the one check_bitexact.py caches in
build/revcheck/ (exported on first use, ~2.5 min). Time on 2 cores: ~2.5 min per round of both
revisions and both configs (``--repeat 3``: ~8 min).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _revs  # noqa: E402 - the scripts folder is not a package

P_B = ("2024年第3季度，公司营收达到1,234万元，同比增长17.5%。总经理表示，明年计划再招聘120名工程师，"
       "并在5个城市开设新的办公室。")
P_C = "会议定于3月15日上午9:30开始，预计持续2个小时，参会人数约为45人。请大家提前10分钟到场，手机调至静音。"
P_D = ("一个开源的语音合成工具，把声学模型和声码器从训练检查点导出成小而快的部署版本。我们先把文字转换成音素，"
       "再逐步生成梅尔频谱，最后用声码器一块一块地合成音频。")
P_LONG = ("在过去的12个月里，我们一共走访了38个城市、215所学校和超过6,000户家庭，记录下孩子们上学路上的故事，"
          "整理了将近1.5万张照片和420小时的录音，并把这些材料交给各地的图书馆和博物馆长期保存，"
          "让更多的人能够看到和听到。")
P_MORNING = ("清晨六点，城市还没有完全醒来，街角的早餐店已经亮起了灯。老板把刚出锅的油条放进竹筐，热气在冷空气里"
             "慢慢散开。第一批客人大多是赶早班的工人，他们点一碗豆浆，站着吃完就匆匆离开。")
P_LIBRARY = ("周末的图书馆里坐满了学生，有人在复习考试，有人在写论文，也有人只是安静地读一本小说。管理员说，"
             "今年借阅量比去年增加了百分之二十，最受欢迎的是历史和科普类的书籍。")
P_RAIN = ("如果明天下雨，我们就把户外活动改到室内举行。请各位家长在周五之前回复报名表，并注明孩子的年龄和过敏"
          "情况，以便我们提前准备午餐和饮用水。")
P_A = "今天气温25.5度，适合出门。我们下午3点在人民广场见面，别迟到！"
# Units as the front end of fd2bc0a counts them (the child reports the real count).
TEXT_300 = [P_LIBRARY + P_C, P_B + P_RAIN, P_D + P_C, P_MORNING + P_A]  # 307, 318, 310, 269
TEXT_1200 = P_B + P_C + P_D + P_LONG + P_MORNING + P_LIBRARY + P_RAIN  # 1,262
WARMUP = "预热一下。"

# metric key -> (label, format, better)
METRICS = {
    "load_s": ("load s", "{:.2f}", "lower"),
    "first_audio_s": ("first audio s (300 units)", "{:.3f}", "lower"),
    "rtf_300": ("RTF 300 units", "{:.3f}", "lower"),
    "rtf_1200": ("RTF 1,200 units", "{:.3f}", "lower"),
    "conc4_audio_per_s": ("4 streams audio-s/s", "{:.2f}", "higher"),
    "rss_mb": ("peak RSS MB", "{:.0f}", "lower"),
}


# ======================================================================================== child side

def child(out: Path, bundle: str, config: str) -> None:
    origin = _revs.assert_origin()
    from sambert_deploy import Synthesizer

    precision, _, backend = config.partition("@")
    t0 = time.perf_counter()
    syn = Synthesizer(bundle, precision=precision, backend=backend or "auto")
    syn.load()
    load_s = time.perf_counter() - t0
    try:
        syn.synthesize(WARMUP)
        res: dict[str, Any] = {"origin": origin, "load_s": load_s, "precisions": syn.precisions(),
                               "backends": syn.backends(), "cpu_budget": getattr(syn, "cpu_budget", None)}
        for key, text in (("300", TEXT_300[0]), ("1200", TEXT_1200)):
            with syn.stream(text) as s:
                n = sum(len(c.samples) for c in s)
                info = s.info
            if key == "300":
                res["first_audio_s"] = info.first_audio_s
            res[f"rtf_{key}"] = info.elapsed_s / info.audio_s
            res[f"units_{key}"] = info.units
            res[f"samples_{key}"] = n
        samples = [0] * len(TEXT_300)
        errors: list[str] = []
        go = threading.Barrier(len(TEXT_300) + 1)

        def one(i: int) -> None:
            try:
                go.wait()
                for c in syn.stream(TEXT_300[i]):
                    samples[i] += len(c.samples)
            except BaseException as e:  # noqa: BLE001 - reported
                errors.append(repr(e))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(TEXT_300))]
        for t in threads:
            t.start()
        go.wait()
        t1 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t1
        if errors:
            raise RuntimeError(errors[0])
        res["conc4_audio_per_s"] = sum(samples) / syn.sample_rate / wall
        res["samples_conc4"] = samples
    finally:
        syn.close()
    out.write_text(json.dumps(res), "utf-8")


# ======================================================================================= parent side

def cpu_busy() -> float:
    """CPU seconds the whole machine has spent busy (all processes, /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_idle(limit: float, busy_max: float = 0.25) -> float:
    """Wait (up to ``limit`` s) until the CPUs are less than ``busy_max`` busy over a second; seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        b0, w0 = cpu_busy(), time.perf_counter()
        time.sleep(1.0)
        if (cpu_busy() - b0) / ((time.perf_counter() - w0) * (os.cpu_count() or 1)) < busy_max:
            break
    return time.perf_counter() - t0 - 1.0

def _fmt(values: list[float], fmt: str) -> str:
    if not values:
        return "failed"
    med = statistics.median(values)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _revs.add_revision_args(ap)
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per revision and config (median)")
    ap.add_argument("--configs", default="auto,fp32@cpu",
                    help="PRECISION[@BACKEND] of the vocoder, comma-separated (auto: the product default, INT8 on "
                         "ONNX Runtime; fp32@cpu: FP32 on ONNX Runtime; plain fp32 lets backend auto pick OpenVINO)")
    ap.add_argument("--wait-idle", type=float, default=30,
                    help="before each run, wait up to this many seconds for the CPUs to be < 25%% busy")
    ap.add_argument("--voice", default="full", choices=sorted(_revs.VOICES), help="fixture voice (default: full)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per process")
    a = ap.parse_args()
    if a.child:
        child(Path(a.child[0]), a.child[1], a.child[2])
        return

    t_start = time.perf_counter()
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    load0 = os.getloadavg()
    with _revs.code_roots(a.baseline, a.candidate) as roots:
        exporters = roots[::-1] if a.export_with == "current" else roots
        bundle = _revs.bundles([a.voice], exporters, rebuild=a.rebuild_bundles)[a.voice]
        labels = [label for label, _ in roots]
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {(c, i): [] for c in configs for i in range(2)}
        print(f"bundle {bundle} ({a.voice} fixture voice), {a.repeat} fresh processes per cell, order A B A B ...",
              flush=True)
        for r in range(a.repeat):
            for config in configs:
                for i, (label, root) in enumerate(roots):
                    waited = wait_idle(a.wait_idle)
                    cpu0 = cpu_busy()
                    res = _revs.run_child(root, Path(__file__).resolve(), [str(bundle), config], a.timeout)
                    others = (cpu_busy() - cpu0 - res.get("_cpu_s", 0.0)) / (res["_wall_s"] * (os.cpu_count() or 1))
                    if "error" in res:
                        print(f"  round {r + 1} {config} {label}: FAILED {res['error']}", flush=True)
                        continue
                    res["rss_mb"] = res["_rss_mb"]
                    runs[(config, i)].append(res)
                    print(f"  round {r + 1} {config:5} {'AB'[i]}: load {res['load_s']:.2f} s, first audio "
                          f"{res['first_audio_s']:.3f} s, RTF {res['rtf_300']:.3f}/{res['rtf_1200']:.3f}, 4 streams "
                          f"{res['conc4_audio_per_s']:.2f} audio-s/s, RSS {res['rss_mb']:.0f} MB "
                          f"({res['_wall_s']:.0f} s; other processes used {max(others, 0):.0%} of the CPUs"
                          f"{f', after waiting {waited:.0f} s for idle' if waited >= 1 else ''})", flush=True)
                    res["others"] = max(others, 0.0)
    load1 = os.getloadavg()
    print(f"\nA = {labels[0]}\nB = {labels[1]}")
    for config in configs:
        for i in range(2):
            ok = runs[(config, i)]
            if ok:
                r0 = ok[0]
                print(f"{config} {'AB'[i]}: vocoder {list(r0['precisions'].values())} on "
                      f"{list(r0['backends'].values())}, CPU budget {r0['cpu_budget']}, units "
                      f"{r0['units_300']}/{r0['units_1200']}")
        a_runs, b_runs = runs[(config, 0)], runs[(config, 1)]
        if a_runs and b_runs:
            same = all(x[k] == y[k] for x in a_runs for y in b_runs
                       for k in ("samples_300", "samples_1200", "samples_conc4"))
            print(f"{config}: samples per text {'equal' if same else 'DIFFER'} between A and B "
                  f"({a_runs[0]['samples_300']}, {a_runs[0]['samples_1200']}, {a_runs[0]['samples_conc4']})")
    print()
    print("| config | metric | baseline (A) median (min-max) | current (B) median (min-max) | ratio B/A |")
    print("|---|---|---|---|---|")
    for config in configs:
        for key, (label, fmt, better) in METRICS.items():
            va = [r[key] for r in runs[(config, 0)] if r.get(key) is not None]
            vb = [r[key] for r in runs[(config, 1)] if r.get(key) is not None]
            ratio = f"{statistics.median(vb) / statistics.median(va):.3f}" if va and vb else "-"
            print(f"| {config} | {label} ({better} is better) | {_fmt(va, fmt)} | {_fmt(vb, fmt)} | {ratio} |")
    others = [r["others"] for v in runs.values() for r in v]
    print(f"\nother processes used {statistics.median(others):.0%} of the CPUs during the median run (max "
          f"{max(others):.0%}); load average {load0[0]:.2f} at start, {load1[0]:.2f} at end; "
          f"{time.perf_counter() - t_start:.0f} s in all")


if __name__ == "__main__":
    main()
