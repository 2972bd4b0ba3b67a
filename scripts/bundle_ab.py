"""Single-stream RTF of two (or more) bundles side by side, e.g. the same voice quantized with two INT8
recipes: scripts/benchmark.py's measurement (one fresh process per run, the same symbol lines), the
bundles alternating run by run so that load from other work on a shared machine hits them alike.

    python scripts/bundle_ab.py old=/tmp/int8b/old new=/tmp/int8b/new --sizes 300 1200 --repeat 5
    python scripts/bundle_ab.py a=B1 b=B2 --configs ort-int8 ov-int8 --voice demo_emo

Prints per size x config the median RTF (min-max) and vocoder busy seconds of each bundle, and each
bundle's ratio to the first one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402 - scripts/benchmark.py, the project's RTF measurement


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", metavar="LABEL=PATH", help="the first is the baseline of the ratios")
    ap.add_argument("--voice", default="demo_emo")
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 1200])
    ap.add_argument("--configs", nargs="+", default=["ort-int8", "ov-int8"], choices=list(benchmark.PRESETS))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=benchmark.available_cpus())
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)
    bundles = [tuple(b.split("=", 1)) for b in args.bundles]
    if any(len(b) != 2 or not Path(b[1], "manifest.json").is_file() for b in bundles):
        ap.error("give LABEL=PATH for each bundle (a folder with manifest.json)")
    labels = [b[0] for b in bundles]
    print(f"revision {benchmark.git_revision()}; {benchmark.machine()}; threads {args.threads}; voice {args.voice}; "
          f"load average {benchmark.load_average()} at start; {args.repeat} runs per cell, bundles alternating",
          flush=True)
    head = ("| units | config | " + " | ".join(f"{x} RTF (min-max) | {x} vocoder busy s" for x in labels) + " | "
            + " | ".join(f"{x} / {labels[0]} RTF" for x in labels[1:]) + " |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|", flush=True)
    for n in args.sizes:
        for config in args.configs:
            runs: dict[str, list[dict]] = {x: [] for x in labels}
            for i in range(args.repeat):
                order = bundles[i % len(bundles):] + bundles[:i % len(bundles)]
                for label, path in order:
                    r = benchmark.child({"kind": "ours", "bundle": path, "voice": args.voice, "n": n,
                                         "kwargs": dict(benchmark.PRESETS[config]), "threads": args.threads},
                                        args.timeout)
                    if "error" in r:
                        raise SystemExit(f"{label} {config} {n} units: {r['error']}")
                    runs[label].append(r)
            rtf = {x: [r["rtf"] for r in v] for x, v in runs.items()}
            med = {x: statistics.median(v) for x, v in rtf.items()}
            cells = [f"{med[x]:.3f} ({min(rtf[x]):.3f}-{max(rtf[x]):.3f}) | "
                     f"{statistics.median(r['vocoder_s'] for r in runs[x]):.2f}" for x in labels]
            ratios = [f"{med[x] / med[labels[0]]:.2f}" for x in labels[1:]]
            print(f"| {n} | {config} | " + " | ".join(cells + ratios) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
