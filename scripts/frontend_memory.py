"""Where the text front end's memory goes: RSS after each loading step, in one fresh process per mode.

Steps run in the order the front end loads them; each row is the RSS growth of that step (psutil) and, with
--tracemalloc, the Python allocations it kept (slower: every allocation is traced). Usage::

    python scripts/frontend_memory.py [--tracemalloc]

Prints a Markdown table. Numbers depend on the allocator and Python version; compare rows of one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

_STEPS = [
    ("python + sambert_deploy.frontend imported", "import sambert_deploy.frontend.frontend", ""),
    (
        "pypinyin imported (char table, phrase table, its segmenter's prefix sets)",
        "import pypinyin; from pypinyin.constants import PHRASES_DICT",
        "",
    ),
    ("jieba + jieba.posseg imported (HMM tables)", "import jieba, jieba.posseg", ""),
    (
        "jieba word table (jieba: Tokenizer.FREQ)",
        "from sambert_deploy.frontend import g2p; g2p.word_freq('中国')",
        "tok = jieba.Tokenizer(); tok.initialize()",
    ),
    (
        "jieba POS table (jieba: POSTokenizer.word_tag_tab)",
        "g2p.segment('中国人民')",
        "pt = jieba.posseg.POSTokenizer(tok); from sambert_deploy.frontend import g2p; g2p._posseg = pt",
    ),
    ("first pinyin lookups", "g2p.word_pinyin('银行卡', 'n', None, None)", ""),
    ("cmudict text", "from sambert_deploy.frontend import english; english.lookup('hello')", ""),
    ("FrontEnd on 20 sentences", "_fe_run()", ""),
]

_CHILD = r"""
import gc, json, sys, tracemalloc
import psutil
trace = sys.argv[1] == "1"
if trace:
    tracemalloc.start()
proc = psutil.Process()
def _fe_run():
    from sambert_deploy.frontend.frontend import FrontEnd
    fe = FrontEnd()
    for s in SENTENCES:
        fe.sentences(s)
SENTENCES = json.loads(sys.argv[2])
steps = json.loads(sys.argv[3])
rows = []
g = globals()
prev_rss = proc.memory_info().rss
prev_py = tracemalloc.get_traced_memory()[0] if trace else 0
base = prev_rss
for name, code, orig in steps:
    exec(orig if (sys.argv[4] == "1" and orig) else code, g)
    gc.collect()
    rss = proc.memory_info().rss
    py = tracemalloc.get_traced_memory()[0] if trace else 0
    rows.append([name, rss - prev_rss, py - prev_py, rss])
    prev_rss, prev_py = rss, py
import resource
print(json.dumps({"rows": rows, "base": base, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
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


def _run(trace: bool, original: bool) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            "1" if trace else "0",
            json.dumps(SENTENCES * 2),
            json.dumps(_STEPS),
            "1" if original else "0",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tracemalloc", action="store_true", help="Python allocations kept instead of RSS (slow)"
    )
    args = ap.parse_args()
    cols = {"jieba's dicts": _run(args.tracemalloc, True), "packed (dicts.py)": _run(args.tracemalloc, False)}
    mib = 1 << 20
    k = 2 if args.tracemalloc else 1
    what = "Python kept +MiB" if args.tracemalloc else "RSS +MiB"
    print("| step | " + " | ".join(f"{c}: {what}" for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for i, (name, *_rest) in enumerate(_STEPS):
        cells = " | ".join(f"{r['rows'][i][k] / mib:.1f}" for r in cols.values())  # type: ignore[index]
        print(f"| {name} | {cells} |")
    print(
        "| **RSS at the end** | " + " | ".join(f"{r['rows'][-1][3] / mib:.0f}" for r in cols.values()) + " |"
    )  # type: ignore[index]
    print(
        "| **peak RSS (ru_maxrss)** | " + " | ".join(f"{r['peak'] / mib:.0f}" for r in cols.values()) + " |"
    )  # type: ignore[operator]
    print(
        "\n(interpreter start: %.0f MiB; the machine may be shared: compare columns of one run)"
        % (cols["packed (dicts.py)"]["base"] / mib)
    )  # type: ignore[operator]
    gc.collect()


if __name__ == "__main__":
    main()
