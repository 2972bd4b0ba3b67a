"""A server subprocess and one timed speech request, shared by the HTTP benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def timed_speech(h: object, url: str, body: dict) -> tuple[float, float, int]:
    """(first byte s, total s, bytes) of one POST /v1/audio/speech on a kept-alive httpx client
    (building a client loads its CA bundle: tens of ms that are the client's, not the server's).
    Raw bytes, as they arrive: no decoding on the client's side of the clock."""
    t0 = time.perf_counter()
    first = None
    n = 0
    with h.stream("POST", url + "/v1/audio/speech", json=body) as r:  # type: ignore[attr-defined]
        r.raise_for_status()
        for b in r.iter_raw():
            if first is None and b:
                first = time.perf_counter() - t0
            n += len(b)
    total = time.perf_counter() - t0
    return first if first is not None else total, total, n


def start_server(bundle: str, *args: str, capture_log: bool = False) -> tuple[subprocess.Popen, str]:
    """`sambert-deploy serve BUNDLE ARGS` on a free loopback port, answering /health; (process, URL).
    ``capture_log``: its stderr is a text pipe for the caller to read (else discarded)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("sambert-deploy", path=str(Path(sys.executable).parent)) or "sambert-deploy"
    proc = subprocess.Popen([exe, "serve", bundle, "--port", str(port), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE if capture_log else subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"the server on {bundle} did not answer /health within 2 minutes (exit status {proc.poll()})")
