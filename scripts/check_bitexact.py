"""Prove that the runtime of this tree streams exactly what a baseline revision streams, bit for bit.

    .venv/bin/python scripts/check_bitexact.py [--baseline fd2bc0a] [--quick] [--candidate REV] [--keep DIR]

The baseline is checked out into a temporary git worktree (removed at the end). One scenario runner
(this file's ``--child`` mode, public API only: ``Synthesizer``, ``stream(text=...)``,
``stream(symbols=...)``, ``SpeechOptions``, ``StreamOptions``, ``AudioChunk`` fields,
``Stream.cancel()``, ``Stream.info``) runs twice in fresh processes of the same .venv python: with
``PYTHONPATH=<baseline worktree>`` and with ``PYTHONPATH=<this tree>`` (uncommitted changes included;
``--candidate REV`` takes another revision instead). Each child checks that ``sambert_deploy`` really
comes from the root it was given (an editable install must not win) and writes every stream's chunks
(samples + sentence, offset, sentence_offset, final, sample rate) to one .npz per stream. Then every
stream is compared sample for sample (``np.array_equal``) with its metadata; any difference, missing
stream or failed within-run check exits 1.

Scenarios, per voice and vocoder precision (``Synthesizer(bundle, precision=P, backend=B, threads=2)``:
fp32 and int8 on ONNX Runtime (B=cpu), bf16 on OpenVINO (B=openvino; skipped, with the reason, where
the CPU has no BF16, as tests/test_openvino.py does); the acoustic model on ONNX Runtime:
text and symbol-line input, speed 1.0 and 1.3, emotions and a second speaker, a sentence over
``max_units`` (split), 4 concurrent streams of different inputs on one Synthesizer, cancellation after k
chunks (k seeded: 0, 1 and two drawn from the run's length; alone and while 3 other streams run), and
a Synthesizer with small ``StreamOptions`` chunks. Within each run it also checks that a cancelled
stream's chunks are the uncancelled run's first k, that nothing comes after ``cancel()``, and that a
stream run among 3 others equals the same stream run alone.

Voices: the tiny fixture with its causal and non-causal vocoder, and (not with ``--quick``) the
full-size fixture, exported and quantized (int8 + bf16, with the real-vocoder check) once into
build/revcheck/ (git-ignored; keyed on the fixture files' size and mtime; ``--rebuild-bundles`` to
redo). Both runs read the same bundles, built by the baseline's exporter (a newer runtime must read an
older bundle; a baseline cannot read a manifest schema it predates), falling back to this tree's
(``--export-with current`` reverses the order). A variant whose gate fails on these random weights is
marked passed in the cache (what is compared is the code, not the speech).

Time on 2 cores, bundles cached: --quick ~25-40 s, full ~4-5 min. First use: + ~3 min for the tiny
bundles, + ~5-8 min for the full one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _revs  # noqa: E402 - the scripts folder is not a package

SEED = 20240611
TEXT_A = "今天气温25.5度，适合出门。我们下午3点在人民广场见面，别迟到！"
TEXT_B = ("2024年第3季度，公司营收达到1,234万元，同比增长17.5%。总经理表示，明年计划再招聘120名工程师，"
          "并在5个城市开设新的办公室。")
TEXT_C = "会议定于3月15日上午9:30开始，预计持续2个小时，参会人数约为45人。请大家提前10分钟到场，手机调至静音。"
TEXT_D = ("一个开源的语音合成工具，把声学模型和声码器从训练检查点导出成小而快的部署版本。我们先把文字转换成音素，"
          "再逐步生成梅尔频谱，最后用声码器一块一块地合成音频。")
# One sentence of 336 units: split at a prosodic break by the default max_units=300.
TEXT_LONG = ("在过去的12个月里，我们一共走访了38个城市、215所学校和超过6,000户家庭，记录下孩子们上学路上的故事，"
             "整理了将近1.5万张照片和420小时的录音，同时还在其中9个城市举办了巡回展览，吸引了超过3万名观众前来参观，"
             "并把这些材料交给各地的图书馆和博物馆长期保存，让更多的人能够看到和听到。")
# The vocoder's backend per precision (the acoustic model runs on ONNX Runtime's CPU EP either way).
BACKEND = {"fp32": "cpu", "int8": "cpu", "bf16": "openvino"}
OV_NOTE = ("OpenVINO groups: each cancellation runs on a fresh Synthesizer that runs nothing after it, and "
           "there is no 4-stream cancel, because a request cancelled mid-call goes back to OpenVINO's pool "
           "and later calls on it raise ('Eltwise shape infer ... mismatch') or return wrong samples "
           "(found in fd2bc0a; the probe below says whether it is still so)")
SPEAKER = {"tiny": "M7", "tiny_nc": "M7", "full": None}  # a second speaker where the voice has one


# ======================================================================================== child side

def _save(out: Path, name: str, chunks: list[Any], meta: dict[str, Any], report: dict[str, Any]) -> None:
    report["streams"].append(name)
    lengths = np.array([len(c.samples) for c in chunks], np.int64)
    samples = (np.concatenate([np.asarray(c.samples) for c in chunks]) if chunks else np.zeros(0, np.float32))
    meta = dict(meta, dtypes=sorted({str(np.asarray(c.samples).dtype) for c in chunks}))
    np.savez(out / (name.replace("/", "__") + ".npz"), samples=samples, lengths=lengths,
             sentence=np.array([c.sentence for c in chunks], np.int64),
             offset=np.array([c.offset for c in chunks], np.int64),
             sentence_offset=np.array([c.sentence_offset for c in chunks], np.int64),
             final=np.array([c.final for c in chunks], bool),
             sample_rate=np.array([c.sample_rate for c in chunks], np.int64),
             meta=np.array(json.dumps(meta, sort_keys=True)))


def _info(stream: Any) -> dict[str, Any]:
    i = stream.info  # the deterministic fields of a finished stream
    return {"state": i.state, "sentences": i.sentences, "units": i.units, "frames": i.frames, "samples": i.samples}


def _start(syn: Any, spec: dict[str, Any]) -> Any:
    from sambert_deploy import SpeechOptions

    kw = dict(spec.get("opts", {}))
    if spec.get("as_options"):  # the SpeechOptions record instead of keyword arguments
        return syn.stream(spec.get("text"), symbols=spec.get("symbols"), options=SpeechOptions(**kw))
    if "symbols" in spec:
        return syn.stream(symbols=spec["symbols"], **kw)
    return syn.stream(text=spec["text"], **kw)


def _consume(syn: Any, spec: dict[str, Any], cancel_after: int | None = None,
             barrier: threading.Barrier | None = None) -> tuple[list[Any], dict[str, Any]]:
    """Run one stream to its end, or cancel it after ``cancel_after`` chunks. Errors are recorded (and
    compared across revisions like audio)."""
    chunks: list[Any] = []
    meta: dict[str, Any] = {}
    try:
        if barrier is not None:
            barrier.wait()
        stream = _start(syn, spec)
        if cancel_after is None:
            chunks.extend(stream)
            meta["info"] = _info(stream)
        else:
            it = iter(stream)
            while len(chunks) < cancel_after and (chunk := next(it, None)) is not None:
                chunks.append(chunk)
            if len(chunks) == cancel_after:  # (a stream shorter than k just ends)
                stream.cancel()
                meta["after_cancel"] = sum(1 for _ in stream)  # must be 0
                meta["state"] = stream.info.state
    except Exception as e:  # noqa: BLE001 - an error is a result to compare
        meta["error"] = f"{type(e).__name__}: {e}"
    return chunks, meta


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.samples, y.samples) and (x.sentence, x.offset, x.sentence_offset, x.final)
        == (y.sentence, y.offset, y.sentence_offset, y.final) for x, y in zip(a, b, strict=True))


def _ks(name: str, n: int) -> list[int]:
    """Seeded cancel points for a stream of n chunks: 0, 1 and two drawn from [2, n)."""
    rng = random.Random(SEED ^ zlib.crc32(name.encode()))
    ks = {0, 1} | ({rng.randrange(2, n) for _ in range(2)} if n > 2 else set())
    return sorted(k for k in ks if k < max(n, 1))


def _open(group: dict[str, Any]) -> Any:
    from sambert_deploy import StreamOptions, Synthesizer

    opts = StreamOptions(**group["stream_options"]) if group.get("stream_options") else None
    return Synthesizer(group["bundle"], precision=group["precision"], backend=group["backend"], threads=2,
                       options=opts)


def _concurrent(syn: Any, specs: list[dict[str, Any]], cancel_i: int | None,
                cancel_k: int | None) -> list[tuple[list[Any], dict[str, Any]]]:
    """Each spec consumed by its own thread, all started together on one Synthesizer."""
    results: list[tuple[list[Any], dict[str, Any]]] = [([], {})] * len(specs)
    barrier = threading.Barrier(len(specs))

    def one(i: int) -> None:
        results[i] = _consume(syn, specs[i], cancel_k if i == cancel_i else None, barrier)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def run_group(group: dict[str, Any], out: Path, report: dict[str, Any]) -> None:
    """Uncancelled streams first (alone, then 4 at once), then the cancellations: on the same Synthesizer,
    or, where ``isolate_cancels`` (OpenVINO), each on a fresh one that runs nothing after its cancel."""
    gname = group["name"]
    checks = report["checks"]
    t0 = time.perf_counter()
    solo: dict[str, list[Any]] = {}

    def check(name: str, ok: bool, detail: Any) -> None:
        checks.append({"check": name, "ok": ok, "detail": "" if ok else json.dumps(detail)})

    def cancel_probe(syn: Any, spec: dict[str, Any], k: int) -> None:
        name = f"{gname}/{spec['name']}"
        part, pmeta = _consume(syn, spec, cancel_after=k)
        _save(out, f"{name}#cancel@{k}", part, pmeta, report)
        ok = (_same(part, solo[spec["name"]][:k]) and pmeta.get("after_cancel") == 0
              and pmeta.get("state") == "cancelled" and "error" not in pmeta)
        check(f"{name}: cancel after {k} = first {k} chunks, then nothing", ok, pmeta)

    def conc_run(syn: Any, conc: dict[str, Any]) -> None:
        specs, cancel_i = conc["streams"], conc.get("cancel_index")
        cancel_k = None
        if cancel_i is not None:
            n = len(solo.get(specs[cancel_i].get("same_as", ""), []))
            cancel_k = random.Random(SEED ^ zlib.crc32(f"{gname}/{conc['name']}".encode())).randrange(1, max(n, 2))
        results = _concurrent(syn, specs, cancel_i, cancel_k)
        for i, (spec, (chunks, meta)) in enumerate(zip(specs, results, strict=True)):
            name = f"{gname}/{conc['name']}[{i}]" + (f"#cancel@{cancel_k}" if i == cancel_i else "")
            _save(out, name, chunks, meta, report)
            ref = solo.get(spec.get("same_as", ""))
            if "error" in meta and i != cancel_i:
                check(f"{name} runs", False, meta["error"])
            elif ref is not None and i == cancel_i:
                check(f"{name}: cancelled after {cancel_k} among 3 running = first {cancel_k} of {spec['same_as']} "
                      "alone, then nothing", _same(chunks, ref[:cancel_k]) and meta.get("after_cancel") == 0, meta)
            elif ref is not None:
                check(f"{name} = {spec['same_as']} alone", _same(chunks, ref), meta)

    with _open(group) as syn:
        try:
            syn.load()
            report["groups"][gname] = {"precisions": syn.precisions(), "backends": syn.backends()}
        except Exception as e:  # noqa: BLE001 - each stream then records the same error
            report["groups"][gname] = {"error": f"{type(e).__name__}: {e}"}
        for spec in group["solo"]:
            name = f"{gname}/{spec['name']}"
            chunks, meta = _consume(syn, spec)
            _save(out, name, chunks, meta, report)
            solo[spec["name"]] = chunks
            if "error" in meta:
                check(f"{name} runs", False, meta["error"])
        for conc in group.get("concurrent", []):
            if conc.get("cancel_index") is None:
                conc_run(syn, conc)
        cancels = [(spec, k) for spec in group["solo"] if spec.get("cancel")
                   for k in _ks(f"{gname}/{spec['name']}", len(solo[spec["name"]]))]
        if not group.get("isolate_cancels"):
            for spec, k in cancels:
                cancel_probe(syn, spec, k)
            for conc in group.get("concurrent", []):
                if conc.get("cancel_index") is not None:
                    conc_run(syn, conc)
    if group.get("isolate_cancels"):
        # A fresh Synthesizer each (OpenVINO compiles per window length): one mid-stream k per input.
        for spec, k in {spec["name"]: (spec, k) for spec, k in cancels}.values():
            with _open(group) as fresh:
                cancel_probe(fresh, spec, k)
        if group.get("ov_probe"):
            report["probes"][gname] = ov_after_cancel_probe(group)
    report["groups"][gname]["seconds"] = time.perf_counter() - t0


def ov_after_cancel_probe(group: dict[str, Any], rounds: int = 12) -> str:
    """Informational (not compared, not counted): do streams that follow a cancelled one on the same
    OpenVINO Synthesizer come out right? In fd2bc0a they do not: a request cancelled mid-call goes back
    to the pool and later calls on it raise or return wrong samples."""
    try:
        with _open(group) as syn:
            ref = syn.synthesize(TEXT_A)
            wrong = errors = 0
            for i in range(rounds):
                try:
                    with syn.stream(TEXT_LONG) as s:
                        for _ in range(1 + i % 4):
                            next(s)
                        s.cancel()
                    if not np.array_equal(syn.synthesize(TEXT_A), ref):
                        wrong += 1
                except Exception:  # noqa: BLE001 - counted
                    errors += 1
    except Exception as e:  # noqa: BLE001 - informational
        return f"could not run: {_short(f'{type(e).__name__}: {e}')}"
    return (f"{rounds} rounds of (cancel a stream after 1-4 chunks, then a new stream): {wrong} wrong, {errors} raised "
            "(0/0 can be luck: it needs a call in flight at the cancel)")


def child(out_json: Path, spec_path: Path, npz_dir: Path) -> None:
    origin = _revs.assert_origin()
    spec = json.loads(spec_path.read_text("utf-8"))
    npz_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"origin": origin, "groups": {}, "checks": [], "streams": [], "probes": {}}
    for group in spec["groups"]:
        try:
            run_group(group, npz_dir, report)
        except Exception as e:  # noqa: BLE001 - the group's remaining streams show as missing
            err = f"{type(e).__name__}: {e}"
            report["groups"].setdefault(group["name"], {})["error"] = err
            report["checks"].append({"check": f"{group['name']} runs to its end", "ok": False, "detail": err})
    out_json.write_text(json.dumps(report), "utf-8")


# ======================================================================================= parent side

def symbol_lines(fixset: str, speaker: str | None, roots: list[tuple[str, Path]]) -> tuple[str, str]:
    """(the fixture's own three symbol sequences, one per line; the front end's lines for TEXT_C, from the
    first of ``roots`` whose ``sambert-deploy symbols`` works). Both runs get the same lines."""
    fix = _revs.FIXTURES / fixset
    lines = [str(np.load(fix / f"{s}.npz")["symbol_sequence"]) for s in ("io_seq0_short", "io_seq1_medium",
                                                                         "io_seq2_emotion")]
    cmd = [_revs.python(), "-m", "sambert_deploy.cli", "-q", "symbols", TEXT_C]
    if speaker:
        cmd += ["--speaker", speaker]
    errors = []
    for label, root in roots:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(root), env=dict(os.environ, PYTHONPATH=str(root)))
        if p.returncode == 0 and p.stdout.strip():
            return "\n".join(lines) + "\n", p.stdout
        errors.append(f"{label}: {p.stderr.strip()[-500:]}")
    raise SystemExit("sambert-deploy symbols failed:\n" + "\n".join(errors))


def build_spec(voices: dict[str, Path], precisions: list[str], roots: list[tuple[str, Path]]) -> dict[str, Any]:
    groups = []
    for vname, bundle in voices.items():
        spk = SPEAKER[vname]
        fixture_syms, fe_syms = symbol_lines(_revs.VOICES[vname][0], spk, roots)
        sym_opts: dict[str, Any] = {"emotion": "sad", "speed": 1.3}
        if spk:
            sym_opts["speaker"] = spk
        solo = [
            {"name": "text-a", "text": TEXT_A, "cancel": True},
            {"name": "text-b-happy-1.3", "text": TEXT_B, "opts": {"emotion": "happy", "speed": 1.3},
             "as_options": True, "cancel": True},
            {"name": "text-long-split", "text": TEXT_LONG},
            {"name": "sym-fixture", "symbols": fixture_syms, "cancel": True},
            {"name": "sym-frontend-sad-1.3", "symbols": fe_syms, "opts": sym_opts},
        ]
        conc_streams = [
            {"text": TEXT_A, "same_as": "text-a"},
            {"text": TEXT_C, "opts": {"emotion": "angry", "speed": 1.3}},
            {"symbols": fixture_syms, "same_as": "sym-fixture"},
            {"text": TEXT_D},
        ]
        concurrent = [{"name": "conc4", "streams": conc_streams},
                      {"name": "conc4-cancel", "streams": [dict(s) for s in conc_streams], "cancel_index": 2}]
        for precision in precisions:
            ov = BACKEND[precision] == "openvino"
            groups.append({"name": f"{vname}/{precision}", "bundle": str(bundle), "precision": precision,
                           "backend": BACKEND[precision], "solo": solo, "isolate_cancels": ov,
                           "ov_probe": ov and vname == "tiny",
                           # OpenVINO: no stream may run after a cancel on the same Synthesizer (OV_NOTE)
                           "concurrent": concurrent[:1] if ov else concurrent})
        # Small chunks: many windows per sentence, postnet chunks smaller than the first window, a low split.
        small = {"postnet_chunk": 20, "vocoder_chunk": 40, "first_chunk": 8, "max_units": 60, "kv_block": 16,
                 "max_ahead": 3}
        groups.append({"name": f"{vname}/fp32-smallchunks", "bundle": str(bundle), "precision": "fp32", "backend": "cpu",
                       "stream_options": small, "solo": [solo[0], solo[2], solo[4]],
                       "concurrent": [{"name": "conc2", "streams": [conc_streams[0], conc_streams[3]]}]})
    return {"groups": groups}


def _file(d: Path, name: str) -> Path:
    return d / (name.replace("/", "__") + ".npz")


def compare(dirs: list[Path], labels: list[str], order: list[str]) -> tuple[list[list[str]], int]:
    """One row per stream (in the order the runs produced them); the number of streams that differ."""
    names = list(dict.fromkeys(order))
    rows, bad = [], 0
    for name in names:
        files = [_file(d, name) for d in dirs]
        if not all(f.is_file() for f in files):
            missing = [lab for lab, f in zip(labels, files, strict=True) if not f.is_file()]
            rows.append([name, "-", "-", "-", f"NO (missing in {', '.join(missing)})"])
            bad += 1
            continue
        a, b = (dict(np.load(f)) for f in files)
        diffs = [k for k in a if k not in b or a[k].shape != b[k].shape or not np.array_equal(a[k], b[k])]
        diffs += [k for k in b if k not in a]
        n = min(len(a["samples"]), len(b["samples"]))
        mad = float(np.max(np.abs(a["samples"][:n].astype(np.float64) - b["samples"][:n]))) if n else 0.0
        chunks = (f"{len(a['lengths'])}" if len(a["lengths"]) == len(b["lengths"])
                  else f"{len(a['lengths'])}/{len(b['lengths'])}")
        samples = (f"{len(a['samples'])}" if len(a["samples"]) == len(b["samples"])
                   else f"{len(a['samples'])}/{len(b['samples'])}")
        ma, mb = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
        note = f" (both raised {_short(mb['error'])})" if "error" in mb else ""
        if diffs:
            bad += 1
            extra = ""
            if "meta" in diffs:
                keys = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
                extra = "; " + "; ".join(f"{k}: {_short(ma.get(k))} vs {_short(mb.get(k))}" for k in keys)
            rows.append([name, chunks, samples, f"{mad:.3g}", f"NO ({', '.join(diffs)} differ{extra})"])
        else:
            rows.append([name, chunks, samples, f"{mad:.3g}", "yes" + note])
    return rows, bad


def _short(v: Any, n: int = 90) -> str:
    t = " ".join(str(v).split())
    return t if len(t) <= n else t[:n] + "..."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _revs.add_revision_args(ap)
    ap.add_argument("--quick", action="store_true", help="tiny voices only (< 1 min)")
    ap.add_argument("--keep", type=Path, help="keep the .npz files of both runs in this folder")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per run")
    a = ap.parse_args()
    if a.child:
        child(Path(a.child[0]), Path(a.child[1]), Path(a.child[2]))
        return

    t_start = time.perf_counter()
    precisions = ["fp32", "int8", "bf16"]
    skip = _revs.bf16_unavailable()
    if skip:
        precisions.remove("bf16")
        print(f"SKIP bf16: {skip}")
    voice_names = ["tiny", "tiny_nc"] + ([] if a.quick else ["full"])
    work = Path(tempfile.mkdtemp(prefix="bitexact-"))
    try:
        labels, dirs, reports = [], [], []
        with _revs.code_roots(a.baseline, a.candidate) as roots:
            # The baseline's exporter first (a newer runtime must read an older bundle, not the reverse);
            # --export-with current: this tree's first. Either falls back to the other where it fails.
            exporters = roots[::-1] if a.export_with == "current" else roots
            voices = _revs.bundles(voice_names, exporters, rebuild=a.rebuild_bundles)
            spec_path = work / "spec.json"
            spec_path.write_text(json.dumps(build_spec(voices, precisions, exporters), ensure_ascii=False), "utf-8")
            for i, (label, root) in enumerate(roots):
                npz = work / f"run{i}"
                t0 = time.perf_counter()
                r = _revs.run_child(root, Path(__file__).resolve(), [str(spec_path), str(npz)], a.timeout)
                if "error" in r:
                    print("\n".join(r.get("stderr", [])))
                    raise SystemExit(f"FAILED: the run on {label} did not complete: {r['error']}")
                print(f"ran {label}: {time.perf_counter() - t0:.0f} s, sambert_deploy from {r['origin']}, peak RSS "
                      f"{r['_rss_mb']:.0f} MB", flush=True)
                labels.append(label)
                dirs.append(npz)
                reports.append(r)
        rows, bad = compare(dirs, labels, reports[0]["streams"] + reports[1]["streams"])
        print(f"\n{labels[0]}  vs  {labels[1]}  ({len(rows)} streams)\n")
        header = ["scenario", "chunks", "samples", "max abs diff", "equal"]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, ["-" * w for w in widths], *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        # What each group ran on must match too (a refactor must not move a precision to another backend).
        for g in reports[0]["groups"]:
            pa, pb = ({k: v for k, v in r["groups"].get(g, {}).items() if k != "seconds"} for r in reports)
            if pa != pb:
                bad += 1
                print(f"NO: {g} runs on {pa} in {labels[0]} but {pb} in {labels[1]}")
        print("\nper group: backends (acoustic model, vocoder) and vocoder precision; seconds (baseline/candidate)")
        for g in reports[0]["groups"]:
            v = reports[1]["groups"].get(g, {})
            secs = "/".join(f"{r['groups'].get(g, {}).get('seconds', float('nan')):.1f}" for r in reports)
            what = (f"{list(v['backends'].values())}, {list(v['precisions'].values())}" if "backends" in v
                    else _short(v.get("error")))
            print(f"  {g}: {what}  ({secs} s)")
        both_failed = sum(1 for r in rows if "both raised" in r[4])
        if both_failed:
            print(f"note: {both_failed} streams raised the same error in both runs (counted equal; see the table)")
        if "bf16" in precisions:
            print(f"\nnote: {OV_NOTE}")
            for label, r in zip(labels, reports, strict=True):
                for g, p in r["probes"].items():
                    print(f"  probe {g}, {label}: {p}")
        failed_checks = 0
        for label, r in zip(labels, reports, strict=True):
            fails = [c for c in r["checks"] if not c["ok"]]
            failed_checks += len(fails)
            print(f"within-run checks, {label}: {len(r['checks']) - len(fails)}/{len(r['checks'])} passed")
            for c in fails:
                print(f"  FAILED: {c['check']} {c['detail']}")
        if a.keep:
            a.keep.mkdir(parents=True, exist_ok=True)
            for label, d in zip(("baseline", "candidate"), dirs, strict=True):
                shutil.copytree(d, a.keep / label, dirs_exist_ok=True)
        total = time.perf_counter() - t_start
        if bad or failed_checks:
            print(f"\nFAIL: {bad} of {len(rows)} streams differ, {failed_checks} within-run checks failed "
                  f"({total:.0f} s)")
            raise SystemExit(1)
        print(f"\nOK: all {len(rows)} streams bit-identical (samples and metadata), all within-run checks passed "
              f"({total:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
