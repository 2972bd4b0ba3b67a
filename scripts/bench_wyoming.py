"""Benchmark: time to first audio over Wyoming (`sambert-deploy wyoming`, loopback) against the same
Python API in-process (``Synthesizer.stream``'s first chunk), for one ~50-character sentence.

The server runs as its own process (as deployed for Home Assistant) and is timed with wyoming's own
AsyncTcpClient, from the request's first event to its first ``audio-chunk``: once one-shot
(``synthesize``) and once the way Home Assistant streams (``synthesize-start``, the text as one
``synthesize-chunk``, the compatibility ``synthesize``, ``synthesize-stop``). The in-process runs use one
Synthesizer in this process. Runs alternate (Wyoming, streamed, in-process, ...) so drift on a shared
machine hits all alike; each row is the median of ``--repeat`` runs after ``--warmup``. "Wyoming adds"
is taken inside each request: the client's first chunk minus the first-audio time the server logged
for that request, so it is what the protocol, the handler and loopback TCP add, free of run-to-run
synthesis variance.

    python scripts/bench_wyoming.py [--bundle demo_out/bundle] [--voice demo_emo] [--repeat 9]
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

TEXT = "今天的天气非常好，我们一起去公园散步吧。湖边的柳树发芽了，孩子们在草地上放风筝，大家都很开心。"
FIRST_AUDIO = re.compile(r"wyoming speech .*first audio (\d+) ms")


def start_server(bundle: str, voice: str, backend: str) -> tuple[subprocess.Popen, int, queue.Queue[str]]:
    """The server on a free loopback port, its log lines in a queue."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sambert_deploy.cli", "wyoming", bundle, "--uri",
                             f"tcp://127.0.0.1:{port}", "--voice", voice, "--backend", backend],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, port, lines


async def wyoming_once(port: int, streamed: bool) -> float:
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

    async with AsyncTcpClient("127.0.0.1", port, read_timeout=120) as c:
        t0 = time.perf_counter()
        if streamed:
            for event in (SynthesizeStart(), SynthesizeChunk(text=TEXT), Synthesize(text=TEXT), SynthesizeStop()):
                await c.write_event(event.event())
        else:
            await c.write_event(Synthesize(text=TEXT).event())
        first = None
        end = "synthesize-stopped" if streamed else "audio-stop"
        while True:
            event = await c.read_event()
            if event is None or event.type == "error":
                raise SystemExit(f"the server answered {event}")
            if event.type == "audio-chunk" and first is None:
                first = time.perf_counter() - t0
            if event.type == end:
                return first if first is not None else time.perf_counter() - t0


def server_first_audio(lines: queue.Queue[str]) -> float:
    """The first-audio time the server logged for the request just answered."""
    while True:
        m = FIRST_AUDIO.search(lines.get(timeout=30))
        if m:
            return int(m.group(1)) / 1e3


def local_once(syn: object, voice: str) -> float:
    t0 = time.perf_counter()
    with syn.stream(TEXT, voice=voice) as s:  # type: ignore[attr-defined]
        next(s)
        first = time.perf_counter() - t0
        for _ in s:
            pass
    return first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(Path(__file__).resolve().parents[1] / "demo_out" / "bundle"))
    ap.add_argument("--voice", default="demo_emo")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    from sambert_deploy.runtime.synthesizer import Synthesizer

    proc, port, lines = start_server(args.bundle, args.voice, args.backend)
    try:
        with Synthesizer(args.bundle, voice=args.voice, backend=args.backend) as syn:
            syn.load(args.voice)
            deadline = time.monotonic() + 300
            while True:  # the server answers describe once it is loaded and warmed up
                try:
                    asyncio.run(wyoming_once(port, False))
                    server_first_audio(lines)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the server did not come up") from None
                    time.sleep(0.2)
            rows: dict[str, list[float]] = {"Wyoming synthesize": [], "Wyoming streamed": [], "in-process": []}
            adds: dict[str, list[float]] = {"Wyoming synthesize": [], "Wyoming streamed": []}
            for i in range(args.warmup + args.repeat):
                got = {}
                for name, streamed in (("Wyoming synthesize", False), ("Wyoming streamed", True)):
                    got[name] = asyncio.run(wyoming_once(port, streamed))
                    server_s = server_first_audio(lines)  # read every time: the log stays in step
                    if i >= args.warmup:
                        adds[name].append(got[name] - server_s)
                got["in-process"] = local_once(syn, args.voice)
                if i >= args.warmup:
                    for name, t in got.items():
                        rows[name].append(t)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    base = statistics.median(rows["in-process"])
    print(f"{len(TEXT)} characters, voice {args.voice}, backend {args.backend}; median of {args.repeat} "
          f"(after {args.warmup} warm-up), runs alternating; server exit {code} on SIGTERM")
    print("| path | first audio ms (median) | min | max | vs in-process | Wyoming adds ms (same request, median) |")
    print("|---|---|---|---|---|---|")
    for name, ts in rows.items():
        add = f"{statistics.median(adds[name]) * 1e3:+.1f}" if name in adds else "-"
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} | {min(ts) * 1e3:.1f} | {max(ts) * 1e3:.1f} | "
              f"{statistics.median(ts) / base:.2f}x | {add} |")


if __name__ == "__main__":
    main()
