"""Benchmark: runtime configurations side by side against the PyTorch-eager way ModelScope runs the model.

For inputs of about 15, 100, 300, 1000 and 3000 units (one symbol line each, the worst case: no
sentence punctuation) and each runtime configuration (``--configs``: a label and its Synthesizer
arguments; by default ONNX Runtime FP32, OpenVINO FP32/BF16/INT8 vocoders, ONNX Runtime INT8 and
``auto``, what a user gets), it prints time to first audio, RTF, peak RSS (peak GPU memory on CUDA)
and where the busy time went (front end / acoustic model / vocoder), beside the project's faithful
torch rebuild run whole-utterance (reference decoder loop keeping every attention map, whole-mel
vocoder), as ratios against that baseline and against ``--reference`` (``ort-fp32``, the previous
runtime) measured in the same run. "Worst gap": with playback starting at the first chunk, how late the
latest chunk arrived (0: the audio plays without a gap; else the buffer that would hide it). Every
measurement runs in a fresh process so peak RSS is its own.
The baseline is skipped above ``--baseline-max`` units (its [M, M] attention maps alone would need
the memory printed instead). A configuration that cannot run (a variant missing or failed its
quality gate: PrecisionError) prints one row saying why. ``--png`` draws RTF and peak RSS against
input length, one line per configuration and one for the baseline.

    python scripts/benchmark.py [--bundle demo_out/bundle] [--sizes 15 100 300 1000 3000] [--png docs/benchmark.png]
    python scripts/benchmark.py --configs ort-fp32 ov-int8 'mine:voc_backend=openvino,precision=bf16'
    python scripts/benchmark.py --precisions fp32 fp16 bf16 int8   # ort-P and ov-P for each
    python scripts/benchmark.py --sizes 100 300 1200 --configs ort-fp32 auto --repeat 3 --wait-idle 120 --baseline-max 0
    python scripts/benchmark.py --from-json results.json --png docs/benchmark.png   # a --json run again, no measuring
    python scripts/benchmark.py --sweep --sizes 100 1200   # vocoder chunk x max_ahead per config, runtime only
    python scripts/benchmark.py --sweep --configs ov-bf16 --vocoder-chunks 256 --stream-options first_chunk=12,24
    python scripts/benchmark.py --configs 'x:voc_backend=openvino,ov.CPU_RUNTIME_CACHE_CAPACITY=0,env.ONEDNN_PRIMITIVE_CACHE_CAPACITY=0'
    (exploration: ov.* are extra OpenVINO compile properties, env.* environment variables of the child)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sambert_deploy.runtime.backends import available_cpus
from sambert_deploy.utils import peak_rss_mb

SEED_TEXT = ("一个开源的语音合成工具，把声学模型和声码器从训练检查点导出成小而快的部署版本。"
             "我们先把文字转换成音素，再逐步生成梅尔频谱，最后用声码器一块一块地合成音频。")

# label -> Synthesizer keyword arguments. Explicit ones run strict (no silent fallback to another
# backend); ``auto`` is every default, what a user gets.
PRESETS: dict[str, dict[str, Any]] = {
    "ort-fp32": {"backend": "cpu", "precision": "fp32", "strict": True},
    "ov-fp32": {"am_backend": "cpu", "voc_backend": "openvino", "precision": "fp32", "strict": True},
    "ov-bf16": {"am_backend": "cpu", "voc_backend": "openvino", "precision": "bf16", "strict": True},
    "ov-int8": {"am_backend": "cpu", "voc_backend": "openvino", "precision": "int8", "strict": True},
    "ort-int8": {"backend": "cpu", "precision": "int8", "strict": True},
    "auto": {},
    "cuda": {"backend": "cuda", "strict": True},  # added by --gpu
}
DEFAULT_CONFIGS = ["ort-fp32", "ov-fp32", "ov-bf16", "ov-int8", "ort-int8", "auto"]
CONFIG_KEYS = {"backend": str, "am_backend": str, "voc_backend": str, "precision": str, "strict": bool,
               "gpu_streams": int}
# Acceptance targets of the precision issue (drawn on the figure).
TARGET_RTF = 0.06
TARGET_RSS_MB = 600


def units_line(n: int) -> str:
    """One symbol line of exactly n units (front-end output repeated, #4 breaks turned into #1)."""
    from dataclasses import replace

    from sambert_deploy.frontend import FrontEnd, FrontEndOptions
    from sambert_deploy.symbols import format_units

    units = [u for s in FrontEnd(FrontEndOptions()).units(SEED_TEXT) for u in s]
    units = [replace(u, sy="#1") if u.break_level == 4 else u for u in units]
    return format_units((units * (n // len(units) + 1))[:n])


def parse_config(spec: str) -> tuple[str, dict[str, Any]]:
    """``LABEL`` (a preset) or ``LABEL:key=value,key=value`` (Synthesizer keyword arguments)."""
    label, sep, rest = spec.partition(":")
    if not sep:
        if label not in PRESETS:
            raise argparse.ArgumentTypeError(f"unknown config '{label}' (presets: {', '.join(PRESETS)}; or "
                                             "LABEL:key=value,...)")
        return label, dict(PRESETS[label])
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if eq and key.startswith(("env.", "ov.")) and len(key) > 4:
            kwargs[key] = int(value) if value.isdigit() else value  # exploration only: see run_ours
            continue
        if not eq or key not in CONFIG_KEYS:
            raise argparse.ArgumentTypeError(f"config '{spec}': expected key=value with key one of "
                                             f"{', '.join(CONFIG_KEYS)} (or env.NAME / ov.PROPERTY)")
        kind = CONFIG_KEYS[key]
        kwargs[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return label, kwargs


def precision_configs(precision: str) -> list[tuple[str, dict[str, Any]]]:
    return [(f"ort-{precision}", {"backend": "cpu", "precision": precision, "strict": True}),
            (f"ov-{precision}", {"am_backend": "cpu", "voc_backend": "openvino", "precision": precision,
                                 "strict": True})]


def config_device(kwargs: dict[str, Any]) -> str:
    return "cuda" if "cuda" in (kwargs.get(k) for k in ("backend", "am_backend", "voc_backend")) else "cpu"


# -- children (one measurement each, in a fresh process) ---------------------------------------------
def run_ours(bundle: str, voice: str, n: int, kwargs: dict[str, Any], threads: int,
             options: dict[str, Any] | None = None, voc_threads: int = 0) -> dict:
    from sambert_deploy.errors import SambertDeployError
    from sambert_deploy.runtime.synthesizer import StreamOptions, Synthesizer

    line = units_line(n)
    opts = StreamOptions(**(options or {}))
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("env.")}  # set by child() in the environment
    ov_props = {k[3:]: kwargs.pop(k) for k in list(kwargs) if k.startswith("ov.")}
    if ov_props:
        _openvino_properties(ov_props)
    try:
        if voc_threads:  # the sweep: intra-op threads per vocoder call instead of the measured default (1)
            kwargs["vocoder_threads"] = voc_threads
        syn = Synthesizer(bundle, voice=voice, threads=threads, options=opts, **kwargs)
        syn.load(voice, text=False)
    except SambertDeployError as e:  # PrecisionError, BackendUnavailableError, MissingExtraError
        return {"error": f"{type(e).__name__}: {e}", "skip": True}
    with syn:
        syn.synthesize(symbols=units_line(8))  # session warm-up outside the timing
        load = OtherLoad()
        t0 = time.perf_counter()
        first = None
        samples = 0
        late = 0.0  # playback from the first chunk on: how late the latest chunk came (the buffer that hides it)
        with syn.stream(symbols=line) as stream:
            for c in stream:
                now = time.perf_counter() - t0
                if first is None:
                    first = now
                late = max(late, now - (first + samples / syn.sample_rate))
                samples += len(c.samples)
            info = stream.info
        total = time.perf_counter() - t0
        others = load.share()
        rate = syn.sample_rate
        (am_be, voc_be), = syn.backends().values()
        prec, = syn.precisions().values()
    gpu_peak = _gpu_peak_mb() if config_device(kwargs) == "cuda" else None
    audio = samples / rate
    return {"first": first, "total": total, "audio": audio, "rtf": total / audio, "rss": peak_rss_mb(),
            "gpu": gpu_peak, "runs": f"{am_be} + {voc_be} {prec}", "frontend_s": info.frontend_busy_s,
            "acoustic_s": info.acoustic_busy_s, "vocoder_s": info.vocoder_busy_s, "others": others,
            "underrun": late}


def _openvino_properties(props: dict[str, Any]) -> None:
    """Exploration only: extra compile properties for every OpenVINO session of this process."""
    from sambert_deploy.runtime.backends import OpenVinoBackend

    base = OpenVinoBackend.config

    def config(self: Any) -> dict[str, Any]:
        return {**base(self), **props}

    OpenVinoBackend.config = config  # type: ignore[method-assign]


def run_torch(model_dir: str, voice: str, n: int, threads: int, device: str) -> dict:
    import torch

    from sambert_deploy.models.loading import load_hifigan, load_sambert, voice_files
    from sambert_deploy.symbols import encode_symbols

    torch.set_num_threads(threads)
    vf = voice_files(model_dir, voice)
    am, inv = load_sambert(vf.am_config, vf.am_ckpt)
    gen = load_hifigan(vf.voc_config, vf.voc_ckpt)
    am.to(device)
    gen.to(device)
    enc = encode_symbols(units_line(n), inv)
    args = [torch.from_numpy(a)[None].to(device) for a in (enc.ling, enc.emotion, enc.speaker)]
    with torch.no_grad():
        warm = encode_symbols(units_line(8), inv)
        am(*[torch.from_numpy(a)[None].to(device) for a in (warm.ling, warm.emotion, warm.speaker)])
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        load = OtherLoad()
        t0 = time.perf_counter()
        out = am(*args)  # reference path: keeps every attention map, as ModelScope's call does
        valid = int(out["LR_length_rounded"][0])
        wav = gen(out["postnet_outputs"][0, :valid].T[None])[0, 0].cpu().numpy()
        if device == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
        others = load.share()
    audio = len(wav) / vf.sample_rate
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"first": total, "total": total, "audio": audio, "rtf": total / audio,
            "rss": peak_rss_mb(), "gpu": gpu, "runs": f"torch {device} fp32", "others": others}


def _cpu_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all CPUs, steal included), from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """The share of the machine's CPUs busy with work other than this process's, from now until
    ``share()``: the noise of a shared machine, printed beside each measurement."""

    def __init__(self) -> None:
        self.busy, self.own, self.t = _cpu_busy_s(), time.process_time(), time.perf_counter()

    def share(self) -> float | None:
        busy = _cpu_busy_s()
        if busy is None or self.busy is None:
            return None
        wall = time.perf_counter() - self.t
        others = (busy - self.busy) - (time.process_time() - self.own)
        return max(0.0, others / (wall * (os.cpu_count() or 1))) if wall > 0 else None


def wait_idle(limit: float, busy_max: float = 0.25) -> None:
    """Wait up to ``limit`` seconds for the machine to be mostly idle (others' share < ``busy_max``)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        probe = OtherLoad()
        time.sleep(2.0)
        share = probe.share()
        if share is None or share < busy_max:
            return


def _gpu_peak_mb() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


WAIT_IDLE = 0.0  # --wait-idle


def child(spec: dict, timeout: float) -> dict:
    if WAIT_IDLE:
        wait_idle(WAIT_IDLE)
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    env = {**os.environ, **{k[4:]: str(v) for k, v in spec.get("kwargs", {}).items() if k.startswith("env.")}}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1][:160]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(spec: dict, repeat: int, timeout: float) -> dict:
    """``repeat`` fresh-process runs of one cell: the medians, and each run's value under ``all_*``."""
    runs = []
    for _ in range(repeat):
        r = child(spec, timeout)
        if "error" in r:
            return r
        runs.append(r)
    out = dict(runs[0])
    for key in ("first", "total", "audio", "rtf", "rss", "frontend_s", "acoustic_s", "vocoder_s", "others",
                "underrun"):
        if runs[0].get(key) is not None:
            out[key] = statistics.median(r[key] for r in runs)
            out["all_" + key] = [r[key] for r in runs]
    return out


# -- the table -----------------------------------------------------------------------------------
HEADER = ("| units | config | runs on (am + vocoder precision) | audio s | first audio ms | worst gap ms | RTF | "
          "peak RSS MB | "
          "speed-up vs torch | speed-up vs {ref} | RSS torch / this | RSS {ref} / this | busy front end / acoustic / "
          "vocoder % | busy / wall | other load % |")


def _ok(d: dict | None) -> bool:
    return bool(d) and "error" not in d  # type: ignore[operator]


def _num(d: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    v = d.get(key)
    if v is None:
        return "-"
    cell = format(v * scale, fmt)
    spread = d.get("all_" + key)
    if spread and len(spread) > 1:
        cell += f" ({format(min(spread) * scale, fmt)}-{format(max(spread) * scale, fmt)})"
    return cell


def row(n: int, label: str, r: dict, torch_r: dict | None, ref: dict | None, is_torch: bool = False) -> str:
    if not _ok(r):
        return "| " + " | ".join([str(n), label, r.get("error", "failed")] + ["-"] * 12) + " |"
    rss = _num(r, "rss", ".0f") + (f" (GPU {r['gpu']:.0f})" if r.get("gpu") is not None else "")
    cells = [str(n), label, r.get("runs", "-"), f"{r['audio']:.1f}", _num(r, "first", ".0f", 1000.0),
             _num(r, "underrun", ".0f", 1000.0), _num(r, "rtf", ".3f"), rss]
    for base in (torch_r, ref):
        cells.append(f"{base['rtf'] / r['rtf']:.2f}x" if _ok(base) and not is_torch else "-")
    for base in (torch_r, ref):
        cells.append(f"{base['rss'] / r['rss']:.2f}x" if _ok(base) and not is_torch else "-")
    if is_torch:
        cells += ["- (whole utterance)", "-"]
    else:
        busy = [r["frontend_s"], r["acoustic_s"], r["vocoder_s"]]
        tot = sum(busy) or 1.0
        cells += [" / ".join(f"{100 * b / tot:.0f}" for b in busy), f"{sum(busy) / r['total']:.2f}"]
    cells.append(_num(r, "others", ".0f", 100.0))
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="demo_out/bundle")
    ap.add_argument("--model-dir", default="demo_out/model")
    ap.add_argument("--voice", default="demo_emo")
    ap.add_argument("--sizes", type=int, nargs="+", default=[15, 100, 300, 1000, 3000])
    ap.add_argument("--configs", type=parse_config, nargs="+", default=None, metavar="CONFIG",
                    help=f"runtime configurations: a preset ({', '.join(PRESETS)}) or LABEL:key=value,... with "
                         f"Synthesizer keys {', '.join(CONFIG_KEYS)} (default: {' '.join(DEFAULT_CONFIGS)})")
    ap.add_argument("--precisions", nargs="+", metavar="P",
                    help="shorthand: configs ort-P and ov-P (acoustic model on ORT, vocoder on OpenVINO) for each P")
    ap.add_argument("--reference", default="ort-fp32", help="config the 'speed-up vs' column compares against")
    ap.add_argument("--threads", type=int, default=available_cpus())
    ap.add_argument("--repeat", type=int, default=1,
                    help="fresh-process runs per runtime cell: medians, (min-max) beside them; the baseline runs once")
    ap.add_argument("--baseline-max", type=int, default=1200, help="largest input the torch baseline runs")
    ap.add_argument("--gpu", action="store_true", help="also the cuda config and torch on CUDA")
    ap.add_argument("--png", type=Path, help="write RTF and peak RSS vs input length here (matplotlib)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--from-json", type=Path, help="no measurement: the table (and --png) from a --json file")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each measurement wait up to S seconds for other work on the machine to stop "
                         "(the 'other load %%' column shows what ran beside each measurement)")
    ap.add_argument("--sweep", action="store_true",
                    help="no baseline: the runtime alone for each config x --vocoder-chunks x --ahead x "
                         "--stream-options x --vocoder-threads (how the defaults were chosen)")
    ap.add_argument("--vocoder-chunks", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--stream-options", type=stream_option, nargs="+", default=[], metavar="NAME=V1,V2",
                    help="sweep: more StreamOptions fields and their values, e.g. first_chunk=12,24 postnet_chunk=24,48")
    ap.add_argument("--ahead", type=int, nargs="+", default=[0], help="StreamOptions.max_ahead values (0: default)")
    ap.add_argument("--vocoder-threads", type=int, nargs="+", default=[0],
                    help="sweep: intra-op threads per vocoder call (0: the Synthesizer's, one)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        spec = json.loads(a.child)
        if spec.pop("kind") == "ours":
            res = run_ours(**spec)
        else:
            res = run_torch(**spec)
        print(json.dumps(res))
        return
    global WAIT_IDLE
    WAIT_IDLE = a.wait_idle
    if a.from_json:
        replay(a)
        return
    if not Path(a.bundle, "manifest.json").is_file():
        sys.exit(f"no bundle at {a.bundle}: run `make demo` first (or pass --bundle/--model-dir)")
    if a.precisions:
        a.configs = (a.configs or []) + [pair for p in a.precisions for pair in precision_configs(p)]
    configs = dict(a.configs or [(c, dict(PRESETS[c])) for c in DEFAULT_CONFIGS])
    if a.gpu:
        configs.setdefault("cuda", dict(PRESETS["cuda"]))
    if a.sweep:
        sweep(a, configs)
        return
    revision = git_revision()
    print(f"revision {revision}; {machine()}; threads {a.threads}; bundle {a.bundle}; voice {a.voice}; "
          "baseline = torch rebuild, "
          "reference decoder loop, whole utterance; random weights (speed and memory only); "
          f"load average {load_average()} at start", flush=True)
    print(HEADER.format(ref=a.reference))
    print("|---" * (HEADER.count("|") - 1) + "|")
    results: dict[str, dict[int, dict]] = {}
    devices = sorted({config_device(kw) for kw in configs.values()})
    for n in a.sizes:
        baselines: dict[str, dict] = {}
        for dev in devices:
            if n <= a.baseline_max:
                base = child({"kind": "torch", "model_dir": a.model_dir, "voice": a.voice, "n": n,
                              "threads": a.threads, "device": dev}, a.timeout)
            else:
                steps = n * 6 // 3  # ~6 frames a unit, 3 frames a step
                gb = 2 * 12 * 8 * steps * steps * 4 / 2**30
                base = {"error": f"skipped (> --baseline-max {a.baseline_max}"
                                 + (f"; attention maps alone ~{gb:.0f} GB)" if gb >= 1 else ")")}
            baselines[dev] = base
            results.setdefault(f"torch ({dev})", {})[n] = base
            print(row(n, f"torch ({dev})", base, None, None, is_torch=True), flush=True)
        for label, kw in configs.items():
            first_error = next((r for r in results.get(label, {}).values() if r.get("skip")), None)
            if first_error is not None:  # the voice cannot load this way: the same at every size
                r = {**first_error, "error": first_error["error"].split(":", 1)[0] + " (as in its first row)"}
            else:
                r = measure({"kind": "ours", "bundle": a.bundle, "voice": a.voice, "n": n, "kwargs": kw,
                             "threads": a.threads}, a.repeat, a.timeout)
            results.setdefault(label, {})[n] = r
            ref = results.get(a.reference, {}).get(n) if label != a.reference else None
            print(row(n, label, r, baselines[config_device(kw)], ref), flush=True)
    print(f"load average {load_average()} at the end (other work on this machine skews every number)")
    meta = {"machine": machine(), "threads": a.threads, "date": datetime.date.today().isoformat(),
            "revision": revision, "reference": a.reference, "configs": configs}
    if a.json:
        _write_atomic(a.json, json.dumps({**meta, "results": results}, indent=1).encode())
        print(f"results: {a.json}")
    if a.png:
        plot(results, a.png, meta)
        print(f"figure: {a.png}")


def replay(a: argparse.Namespace) -> None:
    """The table and the figure again from a ``--json`` file (no measurement)."""
    saved = json.loads(Path(a.from_json).read_text())
    results = {label: {int(n): r for n, r in by_size.items()} for label, by_size in saved["results"].items()}
    ref_label = saved["reference"]
    print(f"revision {saved.get('revision', 'unknown')}; {saved['machine']}; threads {saved['threads']}; measured "
          f"{saved['date']} (replayed from {a.from_json})")
    print(HEADER.format(ref=ref_label))
    print("|---" * (HEADER.count("|") - 1) + "|")
    for n in sorted({n for by_size in results.values() for n in by_size}):
        for label, by_size in results.items():
            if n not in by_size:
                continue
            if label.startswith("torch"):
                print(row(n, label, by_size[n], None, None, is_torch=True))
                continue
            dev = config_device(saved["configs"].get(label, {}))
            ref = results.get(ref_label, {}).get(n) if label != ref_label else None
            print(row(n, label, by_size[n], results.get(f"torch ({dev})", {}).get(n), ref))
    if a.png:
        plot(results, a.png, saved)
        print(f"figure: {a.png}")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{available_cpus()} CPUs ({model})"


def git_revision() -> str:
    """The checkout measured (children import the working tree): short hash, ``+dirty`` with local edits."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def plot(results: dict[str, dict[int, dict]], path: Path, meta: dict[str, Any]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, (ax_rtf, ax_rss) = plt.subplots(1, 2, figsize=(13, 6.2))
    noisy_any = False
    palette = plt.get_cmap("tab10").colors
    configs = [label for label in results if not label.startswith("torch")]
    for label, by_size in results.items():
        pts = sorted((n, r) for n, r in by_size.items() if _ok(r))
        torch = label.startswith("torch")
        color = "black" if torch else palette[configs.index(label) % len(palette)]
        if not pts:
            if torch:
                continue
            err = next(iter(by_size.values()), {}).get("error", "")
            why = ("failed its quality gate" if "quality gate" in err else "variant not built" if " has no " in err
                   else err.split(":", 1)[0][:40] or "failed")
            ax_rtf.plot([], [], label=f"{label}: not run ({why})", linestyle=":", color="grey")
            continue
        xs = [n for n, _ in pts]
        name = f"{label}, whole utterance" if torch else f"{label}: {pts[0][1].get('runs', '')}"
        for ax, key in ((ax_rtf, "rtf"), (ax_rss, "rss")):
            ax.plot(xs, [r[key] for _, r in pts], label=name if ax is ax_rtf else None, color=color,
                            linestyle="--" if torch else "-", marker="s" if torch else "o")
            # hollow: other work used more than a quarter of the machine during that measurement
            noisy = [(n, r[key]) for n, r in pts if (r.get("others") or 0.0) > 0.25]
            noisy_any |= bool(noisy)
            if noisy:
                ax.plot([n for n, _ in noisy], [v for _, v in noisy], linestyle="none", marker="s" if torch else "o",
                        markersize=7, markerfacecolor="white", markeredgecolor=color)
    for ax, target, text in ((ax_rtf, TARGET_RTF, f"target RTF <= {TARGET_RTF}"),
                             (ax_rss, TARGET_RSS_MB, f"target < {TARGET_RSS_MB} MB")):
        ax.axhline(target, color="tab:red", linewidth=0.9, linestyle=":")
        ax.annotate(text, (0.99, target), xycoords=("axes fraction", "data"), color="tab:red", fontsize=8,
                    ha="right", va="top", xytext=(0, -2), textcoords="offset points")
    for ax, ylabel, title in ((ax_rtf, "RTF (compute s / audio s, lower is better)", "Real-time factor"),
                              (ax_rss, "peak RSS MB (own process, lower is better)", "Peak memory")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
        ax.set_xlabel("input length (units, one symbol line)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    note = "; hollow marker: other work used > 25% of the CPUs during that measurement" if noisy_any else ""
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False,
               title=f"config: acoustic model backend + vocoder backend precision{note}", title_fontsize=8)
    fig.suptitle(f"sambert_deploy runtime configurations vs the torch baseline: {meta['machine']}, "
                 f"{meta['threads']} threads; random weights (speed and memory only, not quality); "
                 f"{meta['date']}" + (f", revision {meta['revision']}" if meta.get("revision") else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.11, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _write_atomic(path, buf.getvalue())


def sweep(a: argparse.Namespace, configs: dict[str, dict[str, Any]]) -> None:
    grid: dict[str, list[Any]] = {"vocoder_chunk": a.vocoder_chunks, "max_ahead": [w or None for w in a.ahead]}
    for item in a.stream_options:
        grid[item[0]] = item[1]
    names = list(grid)
    print(f"{machine()}; threads {a.threads}; bundle {a.bundle}; voice {a.voice}; runtime only; StreamOptions "
          "defaults where not swept")
    print("| units | config | " + " | ".join(names) + " | vocoder threads/call | first audio ms | RTF | peak RSS MB | "
          "busy front end / acoustic / vocoder % | busy / wall | other load % | worst gap ms |")
    print("|---" * (len(names) + 10) + "|")
    for n in a.sizes:
        for label, kw in configs.items():
            for values in itertools.product(*grid.values()):
                options = {k: v for k, v in zip(names, values, strict=True) if v is not None}
                for vt in a.vocoder_threads:
                    r = measure({"kind": "ours", "bundle": a.bundle, "voice": a.voice, "n": n, "kwargs": kw,
                                 "threads": a.threads, "options": options, "voc_threads": vt}, a.repeat, a.timeout)
                    if _ok(r):
                        busy = [r["frontend_s"], r["acoustic_s"], r["vocoder_s"]]
                        tot = sum(busy) or 1.0
                        cells = [_num(r, "first", ".0f", 1000.0), _num(r, "rtf", ".3f"), _num(r, "rss", ".0f"),
                                 " / ".join(f"{100 * b / tot:.0f}" for b in busy), f"{sum(busy) / r['total']:.2f}",
                                 _num(r, "others", ".0f", 100.0), _num(r, "underrun", ".0f", 1000.0)]
                    else:
                        cells = ["-", "-", "-", r.get("error", "failed"), "-", "-", "-"]
                    shown = [str(v if v is not None else "default") for v in values]
                    print("| " + " | ".join([str(n), label, *shown, str(vt or 1), *cells]) + " |", flush=True)


def stream_option(spec: str) -> tuple[str, list[int | None]]:
    """``name=v1,v2`` for the sweep: a StreamOptions field and its values (``none`` for None)."""
    from dataclasses import fields

    from sambert_deploy.runtime.synthesizer import StreamOptions

    name, eq, values = spec.partition("=")
    known = [f.name for f in fields(StreamOptions)]
    if not eq or name not in known:
        raise argparse.ArgumentTypeError(f"expected NAME=v1,v2 with NAME one of {', '.join(known)}")
    try:
        return name, [None if v.lower() == "none" else int(v) for v in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec}: values must be integers or none") from None


if __name__ == "__main__":
    main()
