"""Benchmark: first byte and total time per response format (wav, pcm, mp3, aac, opus, flac) over HTTP
against a real `sambert-deploy serve` on loopback, for the same ~200-character text.

The server runs as its own process (as deployed) with the whole machine; one client asks one request at
a time. Each round asks every format once, in turn, so drift on a shared machine hits all formats alike;
each cell is the median over ``--repeat`` rounds (after one warm-up round). The last lines give mp3's
first byte minus wav's, as the difference of the medians and as the median of the per-round
differences (the same text, so the same synthesis, a few seconds apart), against the 50 ms target.

    python scripts/bench_formats.py [--bundle demo_out/bundle] [--voices demo_emo] [--repeat 9]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _http import start_server, timed_speech  # scripts/ is on sys.path when a script runs

# 200 characters of ordinary prose with punctuation (several sentences, so several chunks).
TEXT = ("今天天气很好，阳光明媚，微风轻轻地吹过湖面。我们一家人决定去公园散步，顺便带上相机拍几张照片。"
        "公园里的花开得正艳，红的、黄的、紫的，像一幅色彩丰富的油画。孩子们在草地上追逐嬉戏，老人们坐在长椅上聊天。"
        "中午我们在湖边的小餐馆吃了饭，味道很不错，价格也实惠。下午回家的路上，大家都说这是一个难忘的周末。"
        "傍晚时分，天边的晚霞红得像火一样，美极了。希望下个星期还能有这样的好天气，我们再一起出来走走。")
FORMATS = ("wav", "pcm", "mp3", "aac", "opus", "flac")
TARGET_MS = 50.0


def once(client: object, url: str, voice: str, fmt: str) -> tuple[float, float, int]:
    """(first byte s, total s, bytes) of one request on a kept-alive client."""
    return timed_speech(client, url, {"model": "tts-1", "input": TEXT, "voice": voice, "response_format": fmt})


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sambert_deploy"], capture_output=True, text=True,
                               check=True, cwd=Path(__file__).parent).stdout.strip()
        return out.stdout.strip() + (" (sambert_deploy/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="demo_out/bundle")
    ap.add_argument("--voices", nargs="+", default=["demo_emo"])
    ap.add_argument("--repeat", type=int, default=9)
    a = ap.parse_args()
    if not Path(a.bundle, "manifest.json").is_file():
        sys.exit(f"no bundle at {a.bundle}: run `make demo` first (or pass --bundle)")
    import httpx

    server, url = start_server(a.bundle, "--max-concurrent", "1")
    try:
        print(f"{datetime.date.today()}, commit {commit()}, bundle {a.bundle}, {os.cpu_count()} CPUs, "
              f"{len(TEXT)} characters, median of {a.repeat} rounds (each round every format once)")
        with httpx.Client(timeout=600) as client:
            for voice in a.voices:
                for fmt in FORMATS:  # warm-up: each format's first request loads its encoder
                    once(client, url, voice, fmt)
                runs: dict[str, list[tuple[float, float, int]]] = {f: [] for f in FORMATS}
                for _ in range(a.repeat):
                    for fmt in FORMATS:
                        runs[fmt].append(once(client, url, voice, fmt))
                print(f"\nvoice {voice}\n")
                print("| format | first byte ms | total s | KiB |")
                print("|---|---:|---:|---:|")
                for fmt in FORMATS:
                    first = statistics.median(r[0] for r in runs[fmt]) * 1e3
                    total = statistics.median(r[1] for r in runs[fmt])
                    kib = statistics.median(r[2] for r in runs[fmt]) / 1024
                    print(f"| {fmt} | {first:.0f} | {total:.2f} | {kib:.0f} |")
                medians = {f: statistics.median(r[0] for r in runs[f]) * 1e3 for f in ("mp3", "wav")}
                paired = statistics.median((m[0] - w[0]) * 1e3 for m, w in zip(runs["mp3"], runs["wav"], strict=True))
                diff = medians["mp3"] - medians["wav"]
                verdict = "met" if max(diff, paired) <= TARGET_MS else "NOT met"
                print(f"\nmp3 first byte minus wav's: {diff:+.0f} ms (medians), {paired:+.0f} ms (median of the "
                      f"per-round differences); target within {TARGET_MS:.0f} ms: {verdict}", flush=True)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
