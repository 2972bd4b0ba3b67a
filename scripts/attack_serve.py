"""Attack `sambert-deploy serve` on loopback and print what it withstood (issue 19's acceptance).

A real server process on BUNDLE (default demo_out/bundle), `--max-concurrent 2 --max-queue 4`:

(a) burst: 40 requests at once -> only 200s and 429s, and every 200 body complete (the length a lone
    request gets);
(b) siege: 5 stalled readers (long text, never read), 5 queued ghosts (send, then hang up), 50
    slowloris connections (headers never finished, a line every 2 s) while a normal client fetches its
    audio: its time against its lone time (median of 3), which must stay under 2x;
(c) soak: twice the capacity (4 clients in a loop) with mixed formats (wav, pcm, mp3, opus, flac) for
    --seconds, while /health is pinged every 0.2 s: 5xx count, worst /health latency (must stay under
    100 ms), server RSS at 10% of the run vs at the end (drift under 5%).

    python scripts/attack_serve.py [BUNDLE] [--seconds 300] [--only a,b,c] [--send-timeout 30]

Loopback only; the server's own options are passed through as given below.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

TEXT = "今天天气很好，我们一起去公园散步吧。"
LONG = "一个开源的语音合成工具，把声学模型和声码器从训练检查点导出成小而快的部署版本。" * 25
FORMATS = ("wav", "pcm", "mp3", "opus", "flac")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_bytes(body: dict, port: int) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


class Server:
    def __init__(self, bundle: Path, args: argparse.Namespace):
        exe = shutil.which("sambert-deploy", path=str(Path(sys.executable).parent)) or "sambert-deploy"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [exe, "-q", "serve", str(bundle), "--port", str(self.port), "--max-concurrent", "2", "--max-queue", "4",
               "--send-timeout", str(args.send_timeout), "--park-after", str(args.park_after)]
        self.log = open(args.log, "wb") if args.log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        import httpx

        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode} while loading")
            try:
                h = httpx.get(self.url + "/health", timeout=2).json()
                self.voice = h["voices"][0]
                return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise SystemExit("server did not come up in 300 s")

    def rss_mb(self) -> float:
        import psutil

        return float(psutil.Process(self.proc.pid).memory_info().rss) / 2**20

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(120)
        if self.log is not subprocess.DEVNULL:
            self.log.close()
        return code


def speech(h: object, url: str, voice: str, text: str, fmt: str = "wav") -> tuple[int, int, float]:
    t0 = time.perf_counter()
    r = h.post(url + "/v1/audio/speech", json={"model": "tts-1", "input": text, "voice": voice,  # type: ignore[attr-defined]
                                               "response_format": fmt})
    return r.status_code, len(r.content), time.perf_counter() - t0


def burst(srv: Server) -> list[tuple[str, str]]:
    import httpx

    with httpx.Client(timeout=300) as h:
        _, full, _ = speech(h, srv.url, srv.voice, TEXT)
    results: list[tuple[int, int]] = []
    go = threading.Barrier(40)

    def one() -> None:
        with httpx.Client(timeout=300) as h:
            go.wait()
            code, n, _ = speech(h, srv.url, srv.voice, TEXT)
            results.append((code, n))

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [n for c, n in results if c == 200]
    busy = sum(1 for c, _ in results if c == 429)
    other = sorted({c for c, _ in results} - {200, 429})
    verdict = "PASS" if not other and all(n == full for n in ok) and ok else "FAIL"
    return [("(a) 40 at once: 200 / 429 / other", f"{len(ok)} / {busy} / {other or 0}"),
            ("(a) 200 bodies complete", f"{sum(n == full for n in ok)} of {len(ok)} ({full} bytes each)  {verdict}")]


def attack(srv: Server) -> tuple[threading.Event, list[socket.socket], list[int]]:
    """5 stalled readers, 5 ghosts (gone after 0.5 s), 50 slowloris; returns (stop, sockets, closed count)."""
    stop = threading.Event()
    socks: list[socket.socket] = []
    closed_by_server = [0]

    def slowloris() -> None:
        s = socket.create_connection(("127.0.0.1", srv.port))
        socks.append(s)
        try:
            s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n")
            while not stop.wait(2):
                s.sendall(b"X-Slow: 1\r\n")
        except OSError:
            closed_by_server[0] += 1

    for _ in range(5):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", srv.port))
        s.sendall(request_bytes({"model": "tts-1", "input": LONG, "voice": srv.voice, "response_format": "wav"},
                                srv.port))
        socks.append(s)
    ghosts = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(request_bytes({"model": "tts-1", "input": TEXT, "voice": srv.voice}, srv.port))
        ghosts.append(s)
    for _ in range(50):
        threading.Thread(target=slowloris, daemon=True).start()

    def hang_up() -> None:
        time.sleep(0.5)
        for g in ghosts:
            g.close()

    threading.Thread(target=hang_up, daemon=True).start()
    return stop, socks, closed_by_server


def normal_client(srv: Server) -> tuple[float, int, int]:
    """(seconds, status, attempts): a client told to retry (429) does so after a second, as Retry-After says."""
    import httpx

    t0 = time.perf_counter()
    with httpx.Client(timeout=900) as h:
        code, _, _ = speech(h, srv.url, srv.voice, TEXT)
        attempts = 1
        while code == 429:
            time.sleep(1)
            code, _, _ = speech(h, srv.url, srv.voice, TEXT)
            attempts += 1
    return time.perf_counter() - t0, code, attempts


def siege(srv: Server) -> list[tuple[str, str]]:
    """The normal client twice: its request already running when the attack starts, and sent just after
    the attack (then it queues behind the attackers' requests, first come first served)."""
    import httpx

    with httpx.Client(timeout=300) as h:
        lone = statistics.median(speech(h, srv.url, srv.voice, TEXT)[2] for _ in range(3))
    rows = [("(b) normal client alone (median of 3)", f"{lone:.2f} s")]
    for order in ("running first", "sent after the attack"):
        out: list[tuple[float, int, int]] = []
        client = threading.Thread(target=lambda out=out: out.append(normal_client(srv)))
        if order == "running first":
            client.start()
            while httpx.get(srv.url + "/health", timeout=10).json()["streams_running"] < 1:
                time.sleep(0.01)
            stop, socks, closed = attack(srv)
        else:
            stop, socks, closed = attack(srv)
            time.sleep(0.3)
            client.start()
        time.sleep(0.2)
        health = httpx.get(srv.url + "/health", timeout=10).json()
        client.join()
        took, code, attempts = out[0]
        stop.set()
        time.sleep(0.1)
        for s in socks:
            s.close()
        ratio = took / lone
        rows += [(f"(b) {order}: under siege", f"{took:.2f} s = {ratio:.2f}x lone, {attempts} attempt(s), status "
                  f"{code}  {'PASS' if ratio < 2 and code == 200 else 'FAIL'}"),
                 (f"(b) {order}: server then", f"{health['streams_running']} running, {health['streams_queued']} "
                  f"queued; slowloris closed by the server: {closed[0]} of 50")]
        # the next round starts from an idle server
        deadline = time.time() + 600
        while time.time() < deadline and httpx.get(srv.url + "/health", timeout=10).json()["streams_running"]:
            time.sleep(0.5)
    return rows


def soak(srv: Server, seconds: float) -> list[tuple[str, str]]:
    import httpx

    stop = threading.Event()
    codes: dict[int, int] = {}
    fmts: dict[str, int] = {}
    pings: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        i = k
        with httpx.Client(timeout=600) as h:
            while not stop.is_set():
                fmt = FORMATS[i % len(FORMATS)]
                i += 1
                try:
                    code, _, _ = speech(h, srv.url, srv.voice, TEXT * (1 + i % 3), fmt)
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(type(e).__name__)
                    continue
                with lock:
                    codes[code] = codes.get(code, 0) + 1
                    if code == 200:
                        fmts[fmt] = fmts.get(fmt, 0) + 1
                if code == 429:
                    time.sleep(0.2)

    def pinger() -> None:
        with httpx.Client(timeout=30) as h:
            while not stop.wait(0.2):
                t0 = time.perf_counter()
                h.get(srv.url + "/health")
                pings.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)] + [threading.Thread(target=pinger)]
    for t in threads:
        t.start()
    t_end = time.time() + seconds
    time.sleep(seconds * 0.1)
    rss0 = srv.rss_mb()
    time.sleep(max(t_end - time.time(), 0))
    rss1 = srv.rss_mb()
    stop.set()
    for t in threads:
        t.join()
    # The server's own event-loop lag: tells a blocked loop from pings delayed by a saturated machine
    # (the clients share its cores).
    metrics = httpx.get(srv.url + "/metrics", timeout=30).text
    lag_max = float(next(line.split()[1] for line in metrics.splitlines()
                         if line.startswith("sambert_event_loop_lag_max_seconds ")))
    five = sum(n for c, n in codes.items() if c >= 500)
    worst = max(pings) * 1e3
    drift = (rss1 - rss0) / rss0 * 100
    return [(f"(c) soak {seconds:.0f} s, 4 clients: statuses", json.dumps(dict(sorted(codes.items())))),
            ("(c) served by format", json.dumps(fmts)),
            ("(c) 5xx / client errors", f"{five} / {len(errors)} {sorted(set(errors))}  {'PASS' if not five else 'FAIL'}"),
            ("(c) /health latency: median / p99 / max", f"{statistics.median(pings) * 1e3:.1f} / "
             f"{sorted(pings)[int(len(pings) * 0.99)] * 1e3:.1f} / {worst:.1f} ms over {len(pings)} pings  "
             f"{'PASS' if worst < 100 else 'FAIL'}"),
            ("(c) server event-loop lag, worst", f"{lag_max * 1e3:.1f} ms (its own 50 ms timer, in /metrics)"),
            ("(c) server RSS at 10% -> end", f"{rss0:.0f} -> {rss1:.0f} MB ({drift:+.1f}%)  "
             f"{'PASS' if abs(drift) < 5 else 'FAIL'}")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", default="demo_out/bundle", type=Path)
    ap.add_argument("--seconds", type=float, default=300.0, help="length of the soak (c)")
    ap.add_argument("--only", default="a,b,c", help="which parts to run (a, b, c)")
    ap.add_argument("--send-timeout", type=float, default=30.0, help="the server's --send-timeout")
    ap.add_argument("--park-after", type=float, default=0.5, help="the server's --park-after (0: never park)")
    ap.add_argument("--log", help="write the server's log here")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    srv = Server(args.bundle, args)
    rows: list[tuple[str, str]] = []
    try:
        if "a" in parts:
            rows += burst(srv)
        if "b" in parts:
            rows += siege(srv)
        if "c" in parts:
            rows += soak(srv, args.seconds)
    finally:
        code = srv.stop()
    rows.append(("server exit status after SIGTERM", str(code)))
    width = max(len(k) for k, _ in rows)
    print(f"sambert-deploy serve {args.bundle}, --max-concurrent 2 --max-queue 4 --send-timeout {args.send_timeout:g}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    main()
