"""What the timestamps' source spans cost the front end: FrontEnd.block_units with and without tokens
(the input-span alignment through markup and normalization), median of --runs, one table.

    python scripts/bench_timestamps.py [--runs 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from sambert_deploy.frontend import FrontEnd


def _cases() -> dict[str, str]:
    rng = random.Random(0)
    han = "我们今天在这里讨论一个没有句号的非常长的段落，"
    parts = []
    for _ in range(120):
        parts.append(han[: rng.randint(3, len(han))])
        parts.append(f"{rng.randint(1, 3000)}年")
    return {"sentence, numbers + English": "2024年3月5日下午3点，Hello world，价格是¥25.5，涨了50%。",
            "sentence, plain Han": "今天天气很好，我们去公园散步吧。",
            "2,000-char block, 240 numbers": "".join(parts)[:2000]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    fe = FrontEnd()
    fe.units("你好。")  # dictionaries loaded outside the timing
    print("| case | units only (ms) | with tokens (ms) | ratio |\n|---|---|---|---|")
    for name, block in _cases().items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.runs):
            for with_tokens in (False, True):  # interleaved: both see the same machine load
                t = time.perf_counter()
                fe.block_units(block, fe.emotion, fe.speaker, [fe.emotion], 0, [] if with_tokens else None)
                times[with_tokens].append(time.perf_counter() - t)
        a, b = statistics.median(times[False]) * 1e3, statistics.median(times[True]) * 1e3
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
