"""Where the text front end's memory goes: RSS growth of each loading step, in a fresh process per checkout.

Steps run in the order the front end loads them, through its public functions. ``--baseline PATH`` adds a
column for another checkout of the project (e.g. ``git worktree add /tmp/fe-base <rev>``), run the same
way, so both columns come from one session. Usage::

    python scripts/frontend_memory.py [--baseline /tmp/fe-base] [--tracemalloc]

Prints a Markdown table. Numbers depend on the allocator and Python version; compare columns of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_STEPS = [
    ("interpreter + sambert_deploy.frontend imported", "import sambert_deploy.frontend.frontend"),
    ("pinyin tables (is_phrase)", "from sambert_deploy.frontend import g2p; g2p.is_phrase('银行')"),
    # one step: the packed tables change how jieba.posseg is imported (dicts.py)
    ("jieba imported, its word + POS tables (word_freq)", "g2p.word_freq('中国')"),
    (
        "first segmentation and readings",
        "g2p.segment('中国人民'); g2p.word_pinyin('银行卡', 'n', None, None)",
    ),
    ("cmudict text", "from sambert_deploy.frontend import english; english.lookup('hello')"),
    ("FrontEnd on 20 sentences", "_fe_run()"),
]

_CHILD = r"""
import gc, json, resource, sys, tracemalloc
import psutil
trace = sys.argv[1] == "1"
if trace:
    tracemalloc.start()
proc = psutil.Process()
SENTENCES = json.loads(sys.argv[2])
def _fe_run():
    from sambert_deploy.frontend.frontend import FrontEnd
    fe = FrontEnd()
    for s in SENTENCES:
        fe.sentences(s)
rows = []
g = globals()
prev_rss = proc.memory_info().rss
prev_py = 0
for name, code in json.loads(sys.argv[3]):
    exec(code, g)
    gc.collect()
    rss = proc.memory_info().rss
    py = tracemalloc.get_traced_memory()[0] if trace else 0
    rows.append([name, rss - prev_rss, py - prev_py, rss])
    prev_rss, prev_py = rss, py
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rows": rows, "peak": peak}))
"""

SENTENCES = [
    "今天是2024年5月1日，天气晴，气温25℃。",
    "银行卡尾号1234的用户请注意。",
    "他说：“我们一定要认真地学习。”",
    "NBA总决赛第3场比分是102:98。",
    "请拨打客服热线400-800-1234。",
    "这个小孩儿一点儿也不怕生。",
    "GDP同比增长5.2%，CPU价格下降了3-5成。",
    "重庆的火锅真好吃，我们明天再去吧。",
    "长江是中国最长的河流，全长约6300公里。",
    "行长说这一行很难做。",
]


def _run(root: Path, trace: bool) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, "1" if trace else "0", json.dumps(SENTENCES * 2), json.dumps(_STEPS)],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="another checkout of the project to measure the same way")
    ap.add_argument(
        "--tracemalloc", action="store_true", help="Python allocations kept instead of RSS (slow)"
    )
    args = ap.parse_args()
    cols: dict[str, dict[str, object]] = {}
    if args.baseline:
        cols[f"baseline ({args.baseline})"] = _run(args.baseline.resolve(), args.tracemalloc)
    cols["this checkout"] = _run(ROOT, args.tracemalloc)
    mib = 1 << 20
    k = 2 if args.tracemalloc else 1
    what = "Python kept +MiB" if args.tracemalloc else "RSS +MiB"
    print("| step | " + " | ".join(f"{c}: {what}" for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for i, (name, _code) in enumerate(_STEPS):
        cells = " | ".join(f"{r['rows'][i][k] / mib:.1f}" for r in cols.values())  # type: ignore[index]
        print(f"| {name} | {cells} |")
    end = " | ".join(f"{r['rows'][-1][3] / mib:.0f}" for r in cols.values())  # type: ignore[index]
    peak = " | ".join(f"{r['peak'] / mib:.0f}" for r in cols.values())  # type: ignore[operator]
    print(f"| **RSS at the end, MiB** | {end} |")
    print(f"| **peak RSS (ru_maxrss), MiB** | {peak} |")


if __name__ == "__main__":
    main()
