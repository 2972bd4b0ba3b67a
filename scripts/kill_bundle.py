"""Acceptance check of issue 19, faults 1 and 13: ``kill -9`` at random points of ``sambert-deploy
quantize`` and ``sambert-deploy export --force`` never costs the bundle.

For each kind of run, ``--runs`` times: a fresh copy of a quantized two-voice bundle, the real CLI
started on it, SIGKILL after a random delay drawn uniformly over the measured duration of a complete
run; then ``sambert-deploy info`` must open the bundle, ``sambert-deploy synth`` must speak every voice
in fp32 and in auto, and after one more complete run of the same command no staging folder
(``.BUNDLE.tmp-*``, ``.BUNDLE.old-*``, ``.quantize-*``), temp file or unreferenced graph may remain.

    .venv/bin/python scripts/kill_bundle.py                  # tiny model (tests/fixtures/tiny), 2 x 20 kills
    .venv/bin/python scripts/kill_bundle.py --model demo_out/model --voices zhitian_emo --runs 5

Prints one table per kind; exits 1 if any kill left an unusable bundle or a leftover.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "sambert_deploy.cli", "-q"]
CORPUS_A = "今天的天气很好。\n请问最近的地铁站怎么走？\n会议改到下午三点半。\n我们明天再见吧。\n"
CORPUS_B = "你好，欢迎使用语音合成。\n这是第二段测试文本，长一点点。\n数字一二三四五。\n最后一句话。\n"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if check and r.returncode != 0:
        raise SystemExit(f"sambert-deploy {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


def run_args(kind: str, bundle: Path, model: Path, corpus: Path, voices: list[str]) -> list[str]:
    if kind == "quantize":
        return ["quantize", str(bundle), "--precision", "int8", "--no-reference", "--corpus", str(corpus)]
    return ["export", str(model), "-o", str(bundle), "--force", *[a for v in voices for a in ("--voice", v)]]


def leftovers(bundle: Path) -> list[str]:
    """Staging folders and temp files beside or inside ``bundle``, and graphs its manifest does not name."""
    left = [p.name for p in bundle.parent.iterdir() if p.name.startswith(f".{bundle.name}.")]
    if not bundle.is_dir():
        return [*left, f"{bundle.name} missing"]
    left += [str(p.relative_to(bundle)) for p in bundle.rglob(".*")]
    try:
        m = json.loads((bundle / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError) as e:
        return [*left, f"manifest unreadable: {e}"]
    for v in m["voices"].values():
        named = {g["file"] for g in v["graphs"].values()} | {x["graph"]["file"] for x in v.get("variants", {}).values()}
        left += [f"{v['folder']}/{p.name}" for p in (bundle / v["folder"]).glob("*.onnx") if p.name not in named]
    return sorted(left)


def usable(bundle: Path, voices: list[str], symbols: Path | None, work: Path) -> tuple[bool, int, list[str]]:
    """(info opens it, number of voice x precision syntheses that worked, what failed)."""
    r = cli("info", str(bundle), check=False)
    if r.returncode != 0:
        return False, 0, [f"info: {(r.stderr or r.stdout).strip()[-300:]}"]
    ok, bad = 0, []
    for voice in voices:
        for precision in ("fp32", "auto"):
            out = work / f"{voice}-{precision}.wav"
            out.unlink(missing_ok=True)
            text = ["--symbols-file", str(symbols)] if symbols else ["你好，世界。"]
            r = cli("synth", str(bundle), *text, "--voice", voice, "--precision", precision, "-o", str(out),
                    check=False)
            if r.returncode == 0 and out.is_file() and out.stat().st_size > 44:
                ok += 1
            else:
                bad.append(f"synth {voice} {precision}: {(r.stderr or r.stdout).strip()[-300:]}")
    return True, ok, bad


def setup(args: argparse.Namespace, work: Path) -> tuple[Path, Path, list[str], Path | None]:
    """A model dir, a quantized bundle of it (int8 on corpus A), its voices and a symbols file for tiny."""
    corpus_a = work / "corpus_a.txt"
    corpus_a.write_text(CORPUS_A, "utf-8")
    (work / "corpus_b.txt").write_text(CORPUS_B, "utf-8")
    symbols = None
    if args.model == "tiny":
        sys.path.insert(0, str(REPO))
        from tests.conftest import TINY, make_modelscope_dir
        from tests.test_runtime import symbol_units

        model = make_modelscope_dir(work / "model", TINY, voices=("zhibei_emo", "zhiyan_emo"), extra_ckpt=None)
        symbols = work / "symbols.txt"
        symbols.write_text(f"0\t{symbol_units(30)}\n", "utf-8")
        voices = ["zhibei_emo", "zhiyan_emo"]
    else:
        model = Path(args.model).resolve()
        voices = list(args.voices)
    base = work / "base" / "bundle"
    cli("export", str(model), "-o", str(base), *[a for v in voices for a in ("--voice", v)])
    cli("quantize", str(base), "--precision", "int8", "--no-reference", "--corpus", str(corpus_a))
    return model, base, voices, symbols


def measure(kind: str, base: Path, model: Path, corpus: Path, voices: list[str], work: Path) -> float:
    trial = work / "measure" / "bundle"
    shutil.rmtree(trial.parent, ignore_errors=True)
    shutil.copytree(base, trial)
    t0 = time.perf_counter()
    cli(*run_args(kind, trial, model, corpus, voices))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (the test fixtures, two voices) or a ModelScope model dir")
    ap.add_argument("--voices", nargs="*", default=["zhitian_emo"], help="voices to export from --model")
    ap.add_argument("--runs", type=int, default=20, help="kills per kind of run (runs that end first are extra)")
    ap.add_argument("--kinds", default="quantize,export")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--work", type=Path, help="working folder (default: a temp folder, removed)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-bundle-"))
    work.mkdir(parents=True, exist_ok=True)
    failed = False
    try:
        model, base, voices, symbols = setup(args, work)
        corpus = work / "corpus_b.txt"
        for kind in args.kinds.split(","):
            # The machine is shared, so a run's duration drifts: each kill is placed at a uniform random
            # fraction of the median of every complete run seen so far (the one after each kill included).
            durations = [measure(kind, base, model, corpus, voices, work)]
            print(f"\n{kind}: a complete run took {durations[0]:.1f} s (the CLI process, start to exit); {args.runs} "
                  f"kills at a uniform random fraction of the median complete run so far; model {args.model}, "
                  f"{len(voices)} voice(s)")
            print(f"{'#':>3} {'kill at':>8} {'of run':>7} {'outcome':>9} {'opens':>6} {'voices ok':>10} "
                  f"{'staging after kill':>19} {'stale left':>11}  problems")
            kills, i = 0, 0
            while kills < args.runs:  # a run that ends before its kill is checked and listed, not counted
                i += 1
                case = work / kind / f"run{i}"
                shutil.rmtree(case, ignore_errors=True)
                bundle = case / "bundle"
                shutil.copytree(base, bundle)
                duration = statistics.median(durations)
                delay = rng.uniform(0, duration)
                p = subprocess.Popen([*CLI, *run_args(kind, bundle, model, corpus, voices)], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
                t0 = time.perf_counter()
                try:
                    p.wait(timeout=delay)
                    outcome = f"exit {p.returncode}"
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    outcome = "killed"
                    kills += 1
                at = time.perf_counter() - t0
                after_kill = len(leftovers(bundle))
                opens, ok, bad = usable(bundle, voices, symbols, case)
                stale = ["(not checked: unusable)"]
                if opens and not bad:
                    t1 = time.perf_counter()
                    r = cli(*run_args(kind, bundle, model, corpus, voices), check=False)
                    durations.append(time.perf_counter() - t1)
                    stale = leftovers(bundle) if r.returncode == 0 else [f"next run failed: {r.stderr.strip()[-300:]}"]
                problems = bad + stale
                failed |= bool(problems) or not opens
                print(f"{i:>3} {at:>7.2f}s {at / duration:>7.0%} {outcome:>9} {'yes' if opens else 'NO':>6} "
                      f"{ok:>4}/{2 * len(voices):<5} {after_kill:>19} {len(stale):>11}  {'; '.join(problems)[:300]}",
                      flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\nFAILED: a kill left an unusable bundle or a leftover" if failed else
          "\nevery kill left a bundle that opens and speaks every voice; no leftover after the next run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
