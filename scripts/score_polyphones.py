#!/usr/bin/env python
"""Score polyphone readings: the rules alone, the context model (g2pM's BiLSTM) alone, and combinations.

Two data sets:
  CPP test set  Chinese Polyphones with Pinyin (Park & Lee, Interspeech 2020): one marked polyphone per
                sentence (10,254 sentences, 623 characters). Get it with
                  git clone https://github.com/kakaobrain/g2pM   # data/test.sent, data/test.lb
                and pass the data folder. The labels are citation readings (no tone sandhi), so this script
                scores the words' pinyin before sandhi (g2p.run_words over the Han run holding the target).
  dev set       shared/kantts/frontend/dev_pairs.jsonl through the whole front end (score_frontend.py's
                phones, phones+tone, boundary F1), read in place (research-only licence: never copied).

Usage: python scripts/score_polyphones.py CPP_DATA_DIR [--split test] [--dev PAIRS] [--top 30]
       [--markdown OUT.md]
Prints a table per policy and, for the most frequent polyphones of the CPP split, the accuracy before
(rules) and after (the front end's default policy). Needs g2pM installed (pip install g2pM).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from score_frontend import DEFAULT as DEV_DEFAULT  # noqa: E402
from score_frontend import score as score_dev  # noqa: E402

from sambert_deploy.frontend import FrontEnd, g2p, polyphone  # noqa: E402

MARK = "\u2581"  # CPP marks the target character as ▁X▁
ALL = frozenset({"default", "rule", "phrase"})
POLICIES: dict[str, g2p.PolyphonePolicy] = {
    "rules only (before)": g2p.RULES_ONLY,
    "g2pM at every polyphone": g2p.PolyphonePolicy(sources=ALL, curated_defaults=False),
    "g2pM where the rules only default": g2p.PolyphonePolicy(curated_defaults=False),
    "  + curated defaults kept (after)": g2p.PolyphonePolicy(),
    "  + also over explicit rules": g2p.PolyphonePolicy(sources=frozenset({"default", "rule"})),
    "  + also over phrases if p >= 0.99": g2p.PolyphonePolicy(phrase_prob=0.99),
    "  + only if p >= 0.7": g2p.PolyphonePolicy(min_prob=0.7),
}


@dataclass
class Item:
    sentence: str
    index: int  # of the target character in sentence
    label: str  # front-end spelling (lv4, nve4)


def load_cpp(folder: Path, split: str) -> list[Item]:
    sents = (folder / f"{split}.sent").read_text("utf-8").splitlines()
    labels = (folder / f"{split}.lb").read_text("utf-8").splitlines()
    if len(sents) != len(labels):
        raise SystemExit(f"{split}.sent has {len(sents)} lines but {split}.lb {len(labels)}")
    items = []
    for s, lb in zip(sents, labels, strict=True):
        i = s.find(MARK)
        if i < 0 or s[i + 2 : i + 3] != MARK:
            continue
        items.append(Item(s.replace(MARK, ""), i, lb.strip().replace("u:", "v")))
    return items


def reading_at(item: Item, policy: g2p.PolyphonePolicy) -> str:
    """The pre-sandhi reading the front end gives the target character, from the Han run holding it."""
    for m in g2p.HAN_RUN_RE.finditer(item.sentence):
        if m.start() <= item.index < m.end():
            run, k = m.group(0), item.index - m.start()
            break
    else:
        return ""
    chars: list[tuple[str, str]] = []
    for w in g2p.run_words(run, None, policy=policy):
        if len(w.syllables) == len(w.text):
            chars.extend(zip(w.text, w.syllables, strict=True))
        elif len(w.text) == len(w.syllables) + 1 and w.text.endswith("儿"):  # erhua merged: X儿 -> Xr
            chars.extend(zip(w.text[:-2], w.syllables[:-1], strict=True))
            base = w.syllables[-1][:-2] + w.syllables[-1][-1]  # dianr3 -> dian3 for the character before 儿
            chars.extend([(w.text[-2], base), ("儿", "r5")])
    if "".join(c for c, _ in chars) != run:
        return ""  # a character without a reading was dropped: count as wrong
    return chars[k][1]


def score_cpp(items: list[Item], policy: g2p.PolyphonePolicy) -> tuple[float, float, list[str]]:
    got = [reading_at(it, policy) for it in items]
    ok = sum(g == it.label for g, it in zip(got, items, strict=True))
    ok_base = sum(g[:-1] == it.label[:-1] for g, it in zip(got, items, strict=True))
    return ok / len(items), ok_base / len(items), got


def load_seconds() -> float:
    """Loading the model in a fresh interpreter (pickles -> arrays), median of 3."""
    code = ("import time; from sambert_deploy.frontend import polyphone; t=time.perf_counter(); "
            "assert polyphone.load() is not None; print(time.perf_counter()-t)")
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout) for _ in range(3)]
    return sorted(runs)[1]


def bench_model(items: list[Item]) -> list[str]:
    """Per Han run of the CPP sentences: the model's forward pass in numpy and in onnxruntime (best of 3)."""
    import time

    model = polyphone.load()
    assert model is not None
    runs = [m.group(0) for it in items[:400] for m in g2p.HAN_RUN_RE.finditer(it.sentence)]
    runs = [r for r in runs if any(model.is_polyphone(c) for c in r)]
    out = {}
    for backend in ("numpy", "onnxruntime"):
        model.use_numpy() if backend == "numpy" else model.use_onnxruntime()
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for r in runs:
                model.predict(r)
            best = min(best, time.perf_counter() - t)
        out[backend] = best / len(runs) * 1e6
    model.use_onnxruntime()
    mean = sum(map(len, runs)) / len(runs)
    return ["", f"Model forward pass per Han run ({len(runs)} runs with a polyphone, mean {mean:.1f} characters):",
            "", "| backend | us per run |", "|---|---|",
            *(f"| {k} | {v:.0f} |" for k, v in out.items())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cpp", help="the CPP data folder (test.sent, test.lb) of github.com/kakaobrain/g2pM")
    ap.add_argument("--split", default="test", help="CPP split (test, dev)")
    ap.add_argument("--dev", default=str(DEV_DEFAULT), help="dev_pairs.jsonl (skipped when absent)")
    ap.add_argument("--top", type=int, default=30, help="per-character rows for the N most frequent")
    ap.add_argument("--markdown", help="also write the tables to this file")
    args = ap.parse_args(argv)
    folder = Path(args.cpp)
    if not (folder / f"{args.split}.sent").is_file():
        print(f"no {args.split}.sent in {folder}: git clone https://github.com/kakaobrain/g2pM and pass its "
              "data folder", file=sys.stderr)
        return 2
    if polyphone.load() is None:
        print("g2pM is not installed: pip install g2pM", file=sys.stderr)
        return 2
    items = load_cpp(folder, args.split)
    dev_path = Path(args.dev)
    rows = ([json.loads(x) for x in dev_path.read_text("utf-8").splitlines() if x.strip()]
            if dev_path.is_file() else [])
    fe = FrontEnd()
    fe.sentences("预热。")
    lines = [f"CPP {args.split}: {len(items)} sentences, {len({it.sentence[it.index] for it in items})} "
             f"polyphones; dev: {len(rows)} sentences" + ("" if rows else " (not found)"), "",
             "| policy | CPP | CPP toneless | dev phones | dev phones+tone | dev boundary F1 |",
             "|---|---|---|---|---|---|"]
    per_policy: dict[str, list[str]] = {}
    for name, pol in POLICIES.items():
        acc, acc_base, got = score_cpp(items, pol)
        per_policy[name] = got
        dev = "| – | – | –"
        if rows:
            old = g2p.set_polyphone_policy(pol)
            try:
                r = score_dev(rows, fe)
            finally:
                g2p.set_polyphone_policy(old)
            dev = f"| {r['phones']:.2%} | {r['phones_tone']:.2%} | {r['boundary_f1']:.3f}"
        lines.append(f"| {name} | {acc:.2%} | {acc_base:.2%} {dev} |")
        print(lines[-1], flush=True)
    counts = collections.Counter(it.sentence[it.index] for it in items)
    top = sorted(counts, key=lambda c: (-counts[c], -g2p.word_freq(c), c))[: args.top]
    before, after, alone = (per_policy["rules only (before)"], per_policy["  + curated defaults kept (after)"],
                            per_policy["g2pM at every polyphone"])
    lines += ["", f"Per character, the {len(top)} most frequent in CPP {args.split} (ties: by jieba's "
              "character count):", "",
              "| char | n | readings (CPP) | rules (before) | after | g2pM alone |", "|---|---|---|---|---|---|"]
    for c in top:
        idx = [i for i, it in enumerate(items) if it.sentence[it.index] == c]
        labs = collections.Counter(items[i].label for i in idx)

        def acc(got: list[str], idx: list[int] = idx) -> str:
            return f"{sum(got[i] == items[i].label for i in idx) / len(idx):.0%}"

        lines.append(f"| {c} | {len(idx)} | {' '.join(f'{k}:{v}' for k, v in labs.most_common())} | "
                     f"{acc(before)} | {acc(after)} | {acc(alone)} |")
    def per_char(got: list[str]) -> dict[str, int]:
        ok: collections.Counter[str] = collections.Counter()
        for g, it in zip(got, items, strict=True):
            ok[it.sentence[it.index]] += g == it.label
        return ok

    ok_b, ok_a = per_char(before), per_char(after)
    moved = sorted(counts, key=lambda c: (-(abs(ok_a[c] - ok_b[c])), c))[: args.top]
    moved = [c for c in moved if ok_a[c] != ok_b[c]]
    lines += ["", f"The {len(moved)} characters whose count of correct readings changed most (before -> after):",
              "", "| char | n | correct before | after |", "|---|---|---|---|"]
    lines += [f"| {c} | {counts[c]} | {ok_b[c]} | {ok_a[c]} |" for c in moved]
    if rows:
        lines += ["", "Front-end speed on the dev set (whole front end, text -> units; best of 3 passes, same process):",
                  "", "| front end | sentences/s | vs rules only |", "|---|---|---|"]
        model = polyphone.load()
        assert model is not None
        speeds = {}
        for name, pol, backend in [("rules only (before)", g2p.RULES_ONLY, "onnxruntime"),
                                   ("after, model in onnxruntime", g2p.PolyphonePolicy(), "onnxruntime"),
                                   ("after, model in numpy", g2p.PolyphonePolicy(), "numpy")]:
            model.use_numpy() if backend == "numpy" else model.use_onnxruntime()
            old = g2p.set_polyphone_policy(pol)
            try:
                speeds[name] = len(rows) / min(score_dev(rows, fe)["seconds"] for _ in range(3))
            finally:
                g2p.set_polyphone_policy(old)
            base = speeds["rules only (before)"]
            lines.append(f"| {name} | {speeds[name]:.0f} | {speeds[name] / base:.2f} |")
        model.use_onnxruntime()
    lines += bench_model(items)
    folder_py = polyphone.package_folder()
    size = sum(f.stat().st_size for f in folder_py.glob("*.pkl")) if folder_py else 0
    lines += ["", f"model: g2pM's weights and tables {size / 1e6:.1f} MB; load {load_seconds() * 1000:.0f} ms "
              "(fresh interpreter, median of 3)"]
    text = "\n".join(lines)
    print("\n".join(lines[lines.index("") :]))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
