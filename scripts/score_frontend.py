#!/usr/bin/env python
"""Score the front end against reference symbol lines (shared/kantts/frontend/dev_pairs.jsonl).

Metrics, over syllables aligned by edit distance (erhua merged, as the KAN-TTS converter does):
  phones       share of reference syllables whose two phones match
  phones+tone  share whose phones and tone match
  boundary F1  prosodic-word boundaries (any break unit, levels ignored; the sentence-final #4 excluded,
               it is always right) in reference-syllable positions

Usage: python scripts/score_frontend.py [PAIRS.jsonl] [--json] [--show N] [--bench] [--rules-only]
(--rules-only: polyphones by the rules alone, without the context model; scripts/score_polyphones.py
compares the two on the CPP test set as well)
(--bench: run under `taskset -c 0` for one-core numbers)
The data set is read in place and never copied (its licence is non-commercial research).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sambert_deploy.frontend import FrontEnd
    from sambert_deploy.symbols import Unit

DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "kantts" / "frontend" / "dev_pairs.jsonl"


@dataclass
class Parsed:
    syllables: list[tuple[tuple[str, ...], str]]  # (phones, tone)
    boundaries: set[int]  # index of the syllable a (non-final) break follows


def parse_symbols(units: list[Unit]) -> Parsed:
    """Units -> syllables (grouped by s_begin..s_end / s_both) and break positions."""
    sylls: list[tuple[tuple[str, ...], str]] = []
    bounds: set[int] = set()
    cur: list[str] = []
    tone = ""
    for k, u in enumerate(units):
        if u.is_break:
            if k != len(units) - 1 and sylls:
                bounds.add(len(sylls) - 1)
            continue
        cur.append(u.sy)
        tone = u.tone
        if u.syllable_flag in ("s_end", "s_both"):
            sylls.append((tuple(cur), tone))
            cur = []
    return Parsed(sylls, bounds)


def align(ref: list[tuple[str, ...]], hyp: list[tuple[str, ...]]) -> list[tuple[int, int]]:
    """Edit-distance alignment of syllable phone tuples; returns matched/substituted (ref_i, hyp_j) pairs."""
    n, m = len(ref), len(hyp)
    if n == m:
        return [(i, i) for i in range(n)]
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]))
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        if d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def score(rows: list[dict], fe: FrontEnd, show: int = 0) -> dict[str, float]:
    from sambert_deploy.symbols import parse_units

    n_ref = ph_ok = tone_ok = 0
    tp = n_hyp_b = n_ref_b = 0
    shown = 0
    t0 = time.perf_counter()
    for r in rows:
        hyp = parse_symbols([u for sent in fe.units(r["text"]) for u in sent])
        ref = parse_symbols(parse_units(r["symbols"]))
        pairs = align([p for p, _ in ref.syllables], [p for p, _ in hyp.syllables])
        n_ref += len(ref.syllables)
        h2r = {j: i for i, j in pairs}
        bad = []
        for i, j in pairs:
            if ref.syllables[i][0] == hyp.syllables[j][0]:
                ph_ok += 1
                if ref.syllables[i][1] == hyp.syllables[j][1]:
                    tone_ok += 1
                else:
                    bad.append(f"tone@{i}:{ref.syllables[i]}!={hyp.syllables[j]}")
            else:
                bad.append(f"phone@{i}:{ref.syllables[i]}!={hyp.syllables[j]}")
        hb = {h2r[j] for j in hyp.boundaries if j in h2r}
        tp += len(hb & ref.boundaries)
        n_hyp_b += len(hyp.boundaries)
        n_ref_b += len(ref.boundaries)
        if show and bad and shown < show:
            shown += 1
            print(r["id"], "; ".join(bad), file=sys.stderr)
    elapsed = time.perf_counter() - t0
    prec = tp / n_hyp_b if n_hyp_b else 0.0
    rec = tp / n_ref_b if n_ref_b else 0.0
    return {
        "sentences": len(rows),
        "syllables": n_ref,
        "phones": ph_ok / n_ref if n_ref else 0.0,
        "phones_tone": tone_ok / n_ref if n_ref else 0.0,
        "boundary_precision": prec,
        "boundary_recall": rec,
        "boundary_f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "seconds": elapsed,
    }


_BENCH_SENTENCES = [
    "2024年5月1日，国家统计局发布数据显示，一季度GDP同比增长5.3%，CPI上涨0.1%。",
    "记者从市交通委获悉，地铁12号线将于8:30开通，全长41.5km，设站32座。",
    "据新华社报道，当地气温最高达到39℃，最低为-3℃，请市民注意防暑降温！",
    "该公司发布的iPhone新品售价为$999，比上一代贵了100美元，CEO表示很满意。",
    "报名热线：400-800-1234，咨询电话13912345678，第21届展览会在上海举行。",
    "小明说：“我们一起去银行取点儿钱吧，顺便买一点儿水果。”妈妈笑着答应了。",
    "这批货物重350kg，运费约1,200元，预计3-5个工作日送达，数量有限，先到先得。",
    "会议指出，要不断增强人民群众的获得感、幸福感、安全感，推动高质量发展。",
]


def bench() -> None:
    """Import time (fresh interpreter), first-call initialization, per-sentence latency, 5,000 characters."""
    import statistics
    import subprocess

    code = (
        "import time; t=time.perf_counter(); from sambert_deploy.frontend import FrontEnd; a=time.perf_counter()-t; "
        "t=time.perf_counter(); FrontEnd().sentences('你好，world。'); print(a, time.perf_counter()-t)"
    )  # a fresh interpreter: import, then the first call loads jieba's dictionary, pypinyin and CMUdict
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    imp, init = float(out[0]), float(out[1])
    from sambert_deploy.frontend import FrontEnd

    fe = FrontEnd()
    fe.sentences("你好，world。")
    lat = []
    for _ in range(5):
        for s in _BENCH_SENTENCES:
            t = time.perf_counter()
            fe.sentences(s)
            lat.append(time.perf_counter() - t)
    text = ""
    while len(text) < 5000:
        text += "".join(_BENCH_SENTENCES)
    text = text[:5000]
    t = time.perf_counter()
    n = len(fe.sentences(text))
    t5k = time.perf_counter() - t
    print(
        f"import {imp * 1000:.0f} ms; first call (dictionaries) {init:.2f} s; per sentence median "
        f"{statistics.median(lat) * 1000:.1f} ms (max {max(lat) * 1000:.1f} ms, {len(_BENCH_SENTENCES)} sentences "
        f"of ~40 chars); 5,000 characters ({n} sentences) {t5k:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="?", default=str(DEFAULT))
    ap.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    ap.add_argument(
        "--show", type=int, default=0, help="print the mismatches of the first N sentences (stderr)"
    )
    ap.add_argument(
        "--bench", action="store_true", help="also time import, per-sentence latency and 5,000 chars"
    )
    ap.add_argument(
        "--rules-only", action="store_true", help="polyphones by the rules alone (no context model)"
    )
    args = ap.parse_args(argv)
    path = Path(args.pairs)
    if not path.is_file():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    from sambert_deploy.frontend import FrontEnd, g2p

    if args.rules_only:
        g2p.set_polyphone_policy(g2p.RULES_ONLY)
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    fe = FrontEnd()
    fe.sentences("预热。")  # load jieba and pypinyin outside the timed loop
    res = score(rows, fe, show=args.show)
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{res['sentences']} sentences, {res['syllables']} syllables: phones {res['phones']:.4%}, "
            f"phones+tone {res['phones_tone']:.4%}, boundary P {res['boundary_precision']:.3f} "
            f"R {res['boundary_recall']:.3f} F1 {res['boundary_f1']:.3f} ({res['seconds']:.2f} s)"
        )
    if args.bench:
        bench()
    return 0


if __name__ == "__main__":
    sys.exit(main())
