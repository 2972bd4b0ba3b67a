"""Benchmark: the Triton model over gRPC streaming against the same runtime in-process, in one run.

Writes a model repository for the bundle (``sambert-deploy triton-repo``), starts a real tritonserver
(2.51 from the nvidia-pytriton wheel in ``.venv-triton``, ``make triton-env``; the model runs in that
environment through EXECUTION_ENV_PATH) on 127.0.0.1, and measures:

* start-up: server process start -> ready (bundle loaded, every voice), against a fresh Python
  process importing the runtime and loading the same bundle; and the load itself (sessions and the
  front end's dictionaries, jieba's the largest part), as the model logs it;
* resident memory: the server and its model instance (stub) after the runs, against the fresh process;
* per text, ``--repeat`` times (median): time to first chunk (from the request / ``stream()`` call) and
  RTF (wall / audio), over gRPC (client in this process) against in-process; every gRPC result is
  compared bit for bit with the in-process audio;
* stop: SIGTERM -> exited.

Both sides run the ONNX Runtime CPU backend (``--backend``) with the same CPU budget. One instance,
streams one at a time (the concurrency of one instance is tested in tests/test_triton.py).

    python scripts/bench_triton.py [--bundle demo_out/bundle] [--repeat 5] [--venv .venv-triton]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXTS = {
    "3 sentences": "今天天气很好。我们去公园散步吧！明天我们一起去图书馆看书，然后在湖边喝一杯热茶。",
    "paragraph": ("一个开源的语音合成工具，把声学模型和声码器从训练检查点导出成小而快的部署版本。"
                  "我们先把文字转换成音素，再逐步生成梅尔频谱，最后用声码器一块一块地合成音频。"
                  "服务端可以让许多请求共用同一个合成器，每个请求都尽快听到第一段声音。"
                  "如果一台机器不够，就在负载均衡器后面放几台一样的服务器。"),
}


def _digest(samples: object) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(samples, np.float32).tobytes()).hexdigest()


def in_process(bundle: str, backend: str, repeat: int) -> dict:
    """In a fresh process: import + load time, then each text ``repeat`` times; VmRSS at the end."""
    t0 = time.perf_counter()
    import numpy as np

    from sambert_deploy.runtime.synthesizer import Synthesizer
    from sambert_deploy.utils import peak_rss_mb

    out: dict = {"texts": {}}
    with Synthesizer(bundle, backend=backend) as syn:
        t1 = time.perf_counter()
        syn.load("*")
        out["load_s"] = time.perf_counter() - t1
        out["startup_s"] = time.perf_counter() - t0
        syn.synthesize("预热。")
        for name, text in TEXTS.items():
            firsts, rtfs, digest = [], [], ""
            for _ in range(repeat):
                t = time.perf_counter()
                first, chunks = None, []
                for c in syn.stream(text):
                    if first is None:
                        first = time.perf_counter() - t
                    chunks.append(c.samples)
                wall = time.perf_counter() - t
                audio = np.concatenate(chunks)
                firsts.append(first)
                rtfs.append(wall / (len(audio) / syn.sample_rate))
                digest = _digest(audio)
            out["texts"][name] = {"first_s": firsts, "rtf": rtfs, "sha256": digest}
    out["rss_mb"] = _rss_mb(os.getpid())
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def over_grpc(bundle: str, backend: str, repeat: int, venv: Path) -> dict:
    import re

    import numpy as np

    sys.path.insert(0, str(REPO))  # the local tritonserver harness lives with the tests
    from sambert_deploy.serve.triton.client import stream_speech, synthesize
    from sambert_deploy.serve.triton.repo import RepoOptions, write_repo
    from tests.triton_local import PythonEnv, TritonInstall, TritonServer

    install, env = TritonInstall.find(venv), PythonEnv.of(venv)
    out: dict = {"texts": {}}
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        rep = write_repo(bundle, Path(tmp) / "repo", RepoOptions(backend=backend, execution_env=str(env.prefix)))
        server = TritonServer(install, rep.repo, env, Path(tmp) / "work")
        server.start()
        try:
            out["startup_s"] = server.startup_s
            m = re.search(r"loaded in ([\d.]+) s", server.log_text())
            out["load_s"] = float(m.group(1)) if m else float("nan")
            synthesize(server.url, "预热。")
            for name, text in TEXTS.items():
                firsts, rtfs, digests = [], [], set()
                for _ in range(repeat):
                    with stream_speech(server.url, text) as s:
                        chunks = list(s)
                        wall = time.perf_counter() - s.t0
                        firsts.append(s.arrivals_s[0])
                    audio = np.concatenate([c.samples for c in chunks])
                    rtfs.append(wall / (len(audio) / chunks[0].sample_rate))
                    digests.add(_digest(audio))
                out["texts"][name] = {"first_s": firsts, "rtf": rtfs, "sha256": sorted(digests)}
            pids = server.pids()
            rss = server.rss_mb()
            out["server_rss_mb"] = rss.get(pids[0], float("nan"))
            out["stub_rss_mb"] = sum(v for p, v in rss.items() if p != pids[0])
        finally:
            out["stop_s"] = server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(REPO / "demo_out" / "bundle"))
    ap.add_argument("--backend", default="cpu", choices=["cpu", "auto"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--venv", type=Path, default=Path(os.environ.get("SAMBERT_TRITON_VENV", REPO / ".venv-triton")))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(in_process(args.bundle, args.backend, args.repeat)))
        return
    if not Path(args.bundle, "manifest.json").is_file():
        sys.exit(f"no bundle at {args.bundle}; build the demo one with: make demo (or give --bundle)")
    child = subprocess.run([sys.executable, __file__, "--child", "--bundle", args.bundle, "--backend", args.backend,
                            "--repeat", str(args.repeat)], capture_output=True, text=True, check=True)
    local = json.loads(child.stdout.strip().splitlines()[-1])
    grpc = over_grpc(args.bundle, args.backend, args.repeat, args.venv)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    print(f"bundle {args.bundle}, backend {args.backend}, {os.cpu_count()} CPUs, median of {args.repeat}, revision {rev}")
    print(f"{'':34} {'in-process':>12} {'gRPC/Triton':>12} {'ratio':>7}")

    def row(label: str, a: float, b: float, fmt: str = "{:.2f}") -> None:
        print(f"{label:34} {fmt.format(a):>12} {fmt.format(b):>12} {b / a if a else float('nan'):>7.2f}")

    row("start-up to ready (s)", local["startup_s"], grpc["startup_s"])
    row("  of which the bundle's load (s)", local["load_s"], grpc["load_s"])
    row("RSS (MB): process | model stub", local["rss_mb"], grpc["stub_rss_mb"], "{:.0f}")
    print(f"{'RSS (MB): tritonserver itself':34} {'':>12} {grpc['server_rss_mb']:>12.0f}")
    for name in TEXTS:
        lt, gt = local["texts"][name], grpc["texts"][name]
        row(f"first chunk, {name} (ms)", statistics.median(lt["first_s"]) * 1e3,
            statistics.median(gt["first_s"]) * 1e3, "{:.0f}")
        row(f"RTF, {name}", statistics.median(lt["rtf"]), statistics.median(gt["rtf"]), "{:.3f}")
        same = gt["sha256"] == [lt["sha256"]]
        print(f"{'bit-exact, ' + name:34} {'':>12} {'yes' if same else 'NO':>12}")
    print(f"{'stop on SIGTERM (s)':34} {'':>12} {grpc['stop_s']:>12.2f}")


if __name__ == "__main__":
    main()
