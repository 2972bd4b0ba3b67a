"""Benchmark: text piped into ``sambert-deploy synth -`` (the CLI as a user runs it, a fresh process).

1. A ~1 MB text (about 300,000 characters) written into the CLI's stdin as a slow producer would:
   once the CLI has loaded (its "loaded in" log line), the first sentence alone, a second later the
   rest. It prints the first audio byte's delay after the first sentence was written (and after the
   CLI started), streams for ``--seconds`` (then stops the CLI), and the CLI's peak RSS.
2. The same for a 1,000-character input read to the end: the peak RSS to compare with.
3. A 10,000-character input streamed into a WAV file: the file is read back, and its length is
   checked against the samples the CLI reported.

    python scripts/bench_stdin.py [--bundle demo_out/bundle] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SENTENCES = [
    "一个开源的语音合成工具，把声学模型和声码器从训练检查点导出成小而快的部署版本。",
    "我们先把文字转换成音素，再逐步生成梅尔频谱，最后用声码器一块一块地合成音频。",
    "今天气温二十五度，适合出门散步，公园里的花都开了。",
    "服务端可以让许多请求共用同一个合成器，每个请求都尽快听到第一段声音。",
    "如果客户端提前断开连接，合成就会立刻停止，释放计算资源。",
]


def make_text(chars: int) -> str:
    out: list[str] = []
    n = 0
    k = 0
    while n < chars:
        s = SENTENCES[k % len(SENTENCES)]
        out.append(s + ("\n" if k % 7 == 6 else ""))
        n += len(s)
        k += 1
    return "".join(out)[:chars]


def vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cli(bundle: str, out: str) -> list[str]:
    exe = shutil.which("sambert-deploy", path=str(Path(sys.executable).parent)) or "sambert-deploy"
    return [exe, "synth", bundle, "-", "-o", out]


def piped(bundle: str, text: str, seconds: float | None) -> dict:
    """Write ``text`` into the CLI's stdin (first sentence, then the rest), read its PCM output."""
    p = subprocess.Popen(cli(bundle, "-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_end = text.index("。") + 1
    got: dict = {"bytes": 0, "first": None, "first_from_start": None}
    hwm = [0.0]
    t_sent = [0.0]
    t_start = time.perf_counter()
    loaded = threading.Event()

    def log() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            if b"loaded in" in line:
                loaded.set()
        loaded.set()  # the CLI ended without loading: do not wait forever

    def read() -> None:
        assert p.stdout is not None
        while chunk := p.stdout.read1(65536):
            if got["first"] is None:
                got["first"] = time.perf_counter() - t_sent[0]
                got["first_from_start"] = time.perf_counter() - t_start
            got["bytes"] += len(chunk)

    def write() -> None:
        assert p.stdin is not None
        loaded.wait(120)
        try:
            p.stdin.write(text[:first_end].encode() + b"\n")
            p.stdin.flush()
            t_sent[0] = time.perf_counter()
            time.sleep(1.0)  # the rest arrives later: first audio must not wait for it
            data = text[first_end:].encode()
            for k in range(0, len(data), 4096):
                p.stdin.write(data[k:k + 4096])
            p.stdin.close()
        except (BrokenPipeError, ValueError):  # we stopped the CLI
            pass

    rd = threading.Thread(target=read, daemon=True)
    wr = threading.Thread(target=write, daemon=True)
    lg = threading.Thread(target=log, daemon=True)
    t0 = time.perf_counter()
    lg.start()
    rd.start()
    wr.start()
    while p.poll() is None:
        hwm[0] = max(hwm[0], vm_hwm_mb(p.pid) or 0.0)
        if seconds is not None and time.perf_counter() - t0 > seconds:
            p.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    p.wait(60)
    rd.join(10)
    return {"first_audio_s": got["first"], "first_from_start_s": got["first_from_start"], "audio_s": got["bytes"] / 2 / 16000, "peak_rss_mb": hwm[0],
            "wall_s": time.perf_counter() - t0, "rc": p.returncode}


def to_wav(bundle: str, text: str) -> dict:
    import soundfile as sf

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.wav")
        p = subprocess.run(cli(bundle, out), input=text.encode(), capture_output=True, timeout=3600)
        log = p.stderr.decode()
        m = re.search(r"-> ([\d.]+) s audio", log)
        info = sf.info(out)
        data, rate = sf.read(out, dtype="int16")
        return {"rc": p.returncode, "reported_s": float(m.group(1)) if m else None, "wav_s": info.duration,
                "frames_in_header": info.frames, "frames_read": len(data), "rate": rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="demo_out/bundle")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--big-chars", type=int, default=300_000)
    a = ap.parse_args()
    if not Path(a.bundle, "manifest.json").is_file():
        sys.exit(f"no bundle at {a.bundle}: run `make demo` first (or pass --bundle)")
    big = make_text(a.big_chars)
    print(f"1 MB input: {len(big)} characters, {len(big.encode())} bytes; streamed {a.seconds:.0f} s, then stopped",
          flush=True)
    r_big = piped(a.bundle, big, a.seconds)
    print(f"  first audio {r_big['first_audio_s']:.3f} s after the first sentence arrived "
          f"({r_big['first_from_start_s']:.2f} s after the CLI started); {r_big['audio_s']:.1f} s "
          f"audio in {r_big['wall_s']:.1f} s; peak RSS {r_big['peak_rss_mb']:.0f} MB", flush=True)
    small = make_text(1000)
    r_small = piped(a.bundle, small, None)
    print(f"1,000-character input to the end: first audio {r_small['first_audio_s']:.3f} s, {r_small['audio_s']:.1f} s "
          f"audio, peak RSS {r_small['peak_rss_mb']:.0f} MB (rc {r_small['rc']})", flush=True)
    ratio = r_big["peak_rss_mb"] / r_small["peak_rss_mb"]
    print(f"peak RSS 1 MB input after {a.seconds:.0f} s / 1,000 characters: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")
    w = to_wav(a.bundle, make_text(10_000))
    print(f"10,000 characters -> WAV: rc {w['rc']}, CLI reported {w['reported_s']} s, header {w['frames_in_header']} "
          f"frames = {w['wav_s']:.2f} s at {w['rate']} Hz, {w['frames_read']} frames read back", flush=True)


if __name__ == "__main__":
    main()
