"""Benchmark: time to first byte and RTF over HTTP (`sambert-deploy serve`, loopback) against the same
Python API in-process, for about 100 and 1,000 units of text.

The server runs as its own process (as deployed); the in-process runs use one Synthesizer in this
process. Both are warmed up first (``--warmup`` requests of each size); each cell is the median of
``--repeat`` runs, taken alternately (HTTP, in-process, HTTP, ...) so drift on this shared machine hits
both alike. "HTTP adds" is measured inside each request: the client's first byte minus the first-audio
time the server's own Synthesizer reported for that request (from the server's log), so it is what
uvicorn, FastAPI, the handler and loopback TCP add, free of run-to-run synthesis variance. The
in-process column is there for scale.

    python scripts/bench_http.py [--bundle demo_out/bundle] [--voice demo_emo] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path

from _http import start_server, timed_speech  # scripts/ is on sys.path when a script runs

SENTENCE = "一个开源的语音合成工具，把声学模型和声码器从训练检查点导出成小而快的部署版本。"


def text_of(units: int) -> str:
    from sambert_deploy.frontend import FrontEnd

    fe = FrontEnd()
    per = sum(len(s) for s in fe.units(SENTENCE))
    return SENTENCE * max(1, round(units / per))


def http_once(h: object, url: str, voice: str, text: str) -> tuple[float, float, float]:
    """(first byte s, total s, audio s) of one pcm request (s16le at 16 kHz)."""
    first, total, n = timed_speech(h, url, {"model": "tts-1", "input": text, "voice": voice,
                                            "response_format": "pcm"})
    return first, total, n / 2 / 16000


def local_once(syn: object, voice: str, text: str) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    first = None
    n = 0
    rate = syn.sample_rate  # type: ignore[attr-defined]
    with syn.stream(text, voice=voice) as s:  # type: ignore[attr-defined]
        for c in s:
            if first is None:
                first = time.perf_counter() - t0
            n += len(c.samples)
    total = time.perf_counter() - t0
    return first or total, total, n / rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="demo_out/bundle")
    ap.add_argument("--voice", default="demo_emo")
    ap.add_argument("--units", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="requests of each size, each side, before measuring")
    a = ap.parse_args()
    if not Path(a.bundle, "manifest.json").is_file():
        sys.exit(f"no bundle at {a.bundle}: run `make demo` first (or pass --bundle)")
    server, url = start_server(a.bundle, "--max-concurrent", "1", capture_log=True)
    synth_firsts: list[float] = []

    def read_log() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            m = re.search(r"\(synthesizer ([\d.]+) ms\)", line)
            if m:
                synth_firsts.append(float(m.group(1)) / 1e3)

    threading.Thread(target=read_log, daemon=True).start()
    try:
        import httpx

        from sambert_deploy import Synthesizer

        # The server process has the whole machine to itself while it is measured, and so does this one:
        # each Synthesizer's CPU budget is every CPU, used one request at a time.
        with Synthesizer(a.bundle, backend="cpu") as syn, httpx.Client(timeout=600) as client:
            syn.load("*")  # as the server does: every voice loaded
            http_once(client, url, a.voice, SENTENCE)
            local_once(syn, a.voice, SENTENCE)
            print(f"bundle {a.bundle}, voice {a.voice}, {os.cpu_count()} CPUs, median of {a.repeat} alternating runs")
            print("| units | audio s | in-process first audio s | server's synthesizer first audio s | HTTP first "
                  "byte s | HTTP adds ms (same request) | in-process RTF | HTTP RTF |")
            print("|---" * 8 + "|")
            for units in a.units:
                text = text_of(units)
                for _ in range(a.warmup):
                    http_once(client, url, a.voice, text)
                    local_once(syn, a.voice, text)
                h, p, added, server_first = [], [], [], []
                for _ in range(a.repeat):
                    seen = len(synth_firsts)
                    h.append(http_once(client, url, a.voice, text))
                    for _ in range(100):  # the server logs the request when its stream ends
                        if len(synth_firsts) > seen:
                            break
                        time.sleep(0.01)
                    if len(synth_firsts) > seen:
                        server_first.append(synth_firsts[-1])
                        added.append(h[-1][0] - synth_firsts[-1])
                    p.append(local_once(syn, a.voice, text))
                hf, pf = statistics.median(x[0] for x in h), statistics.median(x[0] for x in p)
                ht, pt = statistics.median(x[1] for x in h), statistics.median(x[1] for x in p)
                sf = f"{statistics.median(server_first):.3f}" if server_first else "-"
                add = f"{statistics.median(added) * 1e3:+.1f}" if added else "-"
                audio = p[0][2]
                print(f"| {units} | {audio:.1f} | {pf:.3f} | {sf} | {hf:.3f} | {add} | {pt / audio:.3f} | "
                      f"{ht / audio:.3f} |", flush=True)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
