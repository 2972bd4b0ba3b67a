"""Text normalization measured: ours vs WeTextProcessing's Chinese TN vs cn2an on tests/frontend/tn_cases.tsv.

Each case is a sentence with its expected spoken form (alternatives separated by ``|``). Outputs are compared
after :func:`canonical` (whitespace removed, ASCII punctuation in its full-width form), so a normalizer is not
penalised for writing ``,`` where the case has ``，``. Prints per-category accuracy and sentence exact match
as a Markdown table; ``--misses NAME`` lists that normalizer's misses.

    python scripts/compare_tn.py [--cache-dir /tmp/wetn_cache] [--misses ours]

WeTextProcessing (PyPI ``WeTextProcessing``, needs ``pynini``) and cn2an are optional: a missing one is a
column of ``n/a``. WeTextProcessing builds its grammars on first use (seconds); their build time is printed.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sambert_deploy.frontend.normalize import normalize  # noqa: E402

CASES = ROOT / "tests" / "frontend" / "tn_cases.tsv"
_PUNCT = str.maketrans({",": "，", ";": "；", ":": "：", "!": "！", "?": "？", "(": "（", ")": "）"})


def canonical(s: str) -> str:
    s = re.sub(r"\s+", "", s).translate(_PUNCT)
    return s[:-1] + "。" if s.endswith(".") else s


def load_cases(path: Path = CASES) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def matches(out: str, expected: str) -> bool:
    got = canonical(out)
    return any(got == canonical(e) for e in expected.split("|"))


def _normalizers(cache_dir: str) -> dict[str, Callable[[str], str] | None]:
    fns: dict[str, Callable[[str], str] | None] = {"ours": normalize}
    try:
        from tn.chinese.normalizer import Normalizer

        os.makedirs(cache_dir, exist_ok=True)
        t0 = time.perf_counter()
        wetn = Normalizer(cache_dir=cache_dir, overwrite_cache=False)
        print(f"WeTextProcessing grammars ready in {time.perf_counter() - t0:.1f} s (cache {cache_dir})")
        fns["WeTextProcessing"] = wetn.normalize
    except ImportError as e:
        print(f"WeTextProcessing not available: {e}")
        fns["WeTextProcessing"] = None
    try:
        import cn2an

        fns["cn2an"] = lambda s: str(cn2an.transform(s, "an2cn"))
    except ImportError as e:
        print(f"cn2an not available: {e}")
        fns["cn2an"] = None
    return fns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default="/tmp/wetn_cache", help="WeTextProcessing's grammar cache")
    ap.add_argument(
        "--misses", default="", help="list the misses of this normalizer (ours, WeTextProcessing, cn2an)"
    )
    args = ap.parse_args()
    cases = load_cases()
    fns = _normalizers(args.cache_dir)
    hits: dict[str, dict[str, int]] = {n: defaultdict(int) for n in fns}
    total: dict[str, int] = defaultdict(int)
    secs: dict[str, float] = defaultdict(float)
    misses: list[tuple[str, str, str, str]] = []
    for c in cases:
        total[c["category"]] += 1
        for name, fn in fns.items():
            if fn is None:
                continue
            t0 = time.perf_counter()
            try:
                out = fn(c["input"])
            except Exception as e:  # a library that raises on a sentence misses it
                out = f"<{type(e).__name__}>"
            secs[name] += time.perf_counter() - t0
            if matches(out, c["expected"]):
                hits[name][c["category"]] += 1
            elif name == args.misses:
                misses.append((c["category"], c["input"], out, c["expected"]))
    names = list(fns)
    print("\n| category | cases | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for cat in sorted(total):
        cells = [f"{hits[n][cat]}/{total[cat]}" if fns[n] is not None else "n/a" for n in names]
        print(f"| {cat} | {total[cat]} | " + " | ".join(cells) + " |")
    n = len(cases)
    cells = [f"**{sum(hits[k].values()) / n:.1%}**" if fns[k] is not None else "n/a" for k in names]
    print(f"| **sentence exact match** | {n} | " + " | ".join(cells) + " |")
    cells = [f"{secs[k] / n * 1e3:.2f}" if fns[k] is not None else "n/a" for k in names]
    print("| ms per sentence (shared machine) | | " + " | ".join(cells) + " |")
    for cat, inp, out, exp in misses:
        print(f"MISS [{cat}] {inp}\n    got      {out}\n    expected {exp}")


if __name__ == "__main__":
    main()
