"""A bundle survives ``kill -9`` at any instant of ``quantize`` and ``export --force`` (issue 19, faults 1
and 13), and the next run leaves no staging folder behind.

The kill is placed deterministically, not by timing: a child process runs the real quantize/export
with an audit hook (:func:`sys.addaudithook`) that counts the file-system changes the run makes under
the test's folder (renames and replaces, removals, mkdir, rmtree, writes opened outside a hidden
staging folder, the atomic directory exchange) and SIGKILLs itself just before the chosen one. A first
run counts them; then the test kills before each one in turn, on a fresh copy of the bundle, and checks
that the bundle opens (sha256 of every graph verified), that every voice synthesizes in fp32 and auto,
and that one more complete run leaves no staging folder, no temp file and no unreferenced graph.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sambert_deploy.runtime.manifest import MANIFEST, read_manifest
from sambert_deploy.runtime.synthesizer import Synthesizer

from .conftest import REPO, TINY, make_modelscope_dir, need_module
from .test_runtime import symbol_units

need_module("onnxruntime.quantization", "the quantize extra, part of the test install (make test)")

VOICES = ("zhibei_emo", "zhiyan_emo")  # two voices: the old quantize wrote the manifest only after all of them
CORPUS_A = "今天的天气很好。\n请问最近的地铁站怎么走？\n会议改到下午三点半。\n我们明天再见吧。\n"
CORPUS_B = "你好，欢迎使用语音合成。\n这是第二段测试文本，长一点点。\n数字一二三四五。\n最后一句话。\n"

CHILD = textwrap.dedent(r'''
    import json, os, signal, sys
    kill_at, root, job = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "sambert_deploy.rename_exchange"}
    seen = []

    def hook(event, args):
        if event == "open":
            # a write opened on a visible path (a hidden staging folder or temp file is invisible to readers)
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
            if not writes or not isinstance(path, str) or "/." in path[len(root):]:
                return
        elif event not in CHANGES:
            return
        if not args or not isinstance(args[0], (str, bytes, os.PathLike)) or root not in os.fsdecode(args[0]):
            return
        seen.append(f"{event} {os.fsdecode(args[0])[len(root):]}")
        if len(seen) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    if job["kind"] == "quantize":
        from sambert_deploy.calibration.bundle import QuantizeOptions, quantize_bundle
        quantize_bundle(job["bundle"], QuantizeOptions(precisions=("int8",), corpus=job["corpus"], reference=False))
    else:
        from sambert_deploy.export.bundle import ExportOptions, export_model
        export_model(job["model"], job["bundle"], all_voices=True, options=ExportOptions(force=True, check=False))
    print(json.dumps(seen))
''')


def _child(kill_at: int, root: Path, job: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", CHILD, str(kill_at), str(root), json.dumps(job)], env=env,
                          capture_output=True, text=True, timeout=600)


def _changes(root: Path, job: dict[str, str]) -> list[str]:
    r = _child(0, root, job)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _complete_run(job: dict[str, str]) -> None:
    if job["kind"] == "quantize":
        from sambert_deploy.calibration.bundle import QuantizeOptions, quantize_bundle

        quantize_bundle(job["bundle"], QuantizeOptions(precisions=("int8",), corpus=Path(job["corpus"]),
                                                       reference=False))
    else:
        from sambert_deploy.export.bundle import ExportOptions, export_model

        export_model(job["model"], job["bundle"], all_voices=True, options=ExportOptions(force=True, check=False))


def _usable(bundle: Path) -> list[str]:
    """What is wrong with ``bundle`` for a user (empty: it opens and every voice speaks in fp32 and auto)."""
    try:
        m = read_manifest(bundle)  # the sha256 of every graph and variant too
    except Exception as e:  # noqa: BLE001 - the report names whatever refused it
        return [f"read_manifest: {type(e).__name__}: {e}"]
    # The old bundle or the new one, never a mix: a variant whose file does not match the manifest
    # (read as disabled, the bundle still opening) is a half-done quantize all the same.
    problems = [f"{v.name} {p}: {var.damage}" for v in m.voices.values() for p, var in v.variants.items()
                if var.damage]
    sym = symbol_units(12, 1)
    for voice in m.voices:
        for precision in ("fp32", "auto"):
            try:
                with Synthesizer(bundle, voice=voice, backend="cpu", precision=precision) as syn:
                    audio = syn.synthesize(symbols=sym, voice=voice)
                if not (audio.size and np.isfinite(audio).all()):
                    problems.append(f"{voice} {precision}: {audio.size} samples")
            except Exception as e:  # noqa: BLE001
                problems.append(f"{voice} {precision}: {type(e).__name__}: {e}")
    return problems


def _leftovers(bundle: Path) -> list[str]:
    """Staging folders and temp files of any run, beside or inside ``bundle``, and graphs no manifest names."""
    left = sorted(p.name for p in bundle.parent.iterdir() if p.name.startswith(f".{bundle.name}."))
    left += sorted(str(p.relative_to(bundle)) for p in bundle.rglob(".*"))
    m = read_manifest(bundle, verify=False)
    for v in m.voices.values():
        named = {g.file for g in v.graphs.values()} | {var.graph.file for var in v.variants.values()}
        left += sorted(f"{v.folder}/{p.name}" for p in (bundle / v.folder).glob("*.onnx") if p.name not in named)
    return left


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two voices exported, then quantized to int8 on corpus A (so a re-quantize on B changes the file)."""
    from sambert_deploy.calibration.bundle import QuantizeOptions, quantize_bundle
    from sambert_deploy.export.bundle import ExportOptions, export_model

    root = tmp_path_factory.mktemp("tx")
    model = make_modelscope_dir(root / "model", TINY, voices=VOICES, extra_ckpt=None)
    corpora = {}
    for name, text in (("a", CORPUS_A), ("b", CORPUS_B)):
        corpora[name] = root / f"corpus_{name}.txt"
        corpora[name].write_text(text, "utf-8")
    bundle = root / "base" / "bundle"
    export_model(model, bundle, all_voices=True, options=ExportOptions(check=False))
    quantize_bundle(bundle, QuantizeOptions(precisions=("int8",), corpus=corpora["a"], reference=False))
    return {"model": model, "bundle": bundle, "corpus_b": corpora["b"]}


def _job(kind: str, base: dict[str, Path], bundle: Path) -> dict[str, str]:
    if kind == "quantize":
        return {"kind": kind, "bundle": str(bundle), "corpus": str(base["corpus_b"])}
    return {"kind": kind, "bundle": str(bundle), "model": str(base["model"])}


RENAMES = ("os.rename ", "sambert_deploy.rename_exchange ")


def _kill_points(changes: list[str], every: bool) -> list[int]:
    """1-based indices of the changes to kill before: the first of each distinct change (a repeated
    mkdir of an existing folder changes nothing), or with ``every`` False only the renames, where a
    run publishes something (the windows the previous version broke in), and its last change."""
    seen: set[str] = set()
    points = []
    for k, c in enumerate(changes, 1):
        if c not in seen and (every or c.startswith(RENAMES) or k == len(changes)):
            points.append(k)
        seen.add(c)
    return points


def _kill_and_check(base: dict[str, Path], tmp_path: Path, kind: str, every: bool) -> None:
    counted = tmp_path / "count" / "bundle"
    shutil.copytree(base["bundle"], counted)
    changes = _changes(tmp_path / "count", _job(kind, base, counted))
    assert changes, "the run changed nothing under the bundle's folder: the hook sees nothing"
    if kind == "quantize":  # the re-quantize really replaces the int8 vocoder, else nothing is at stake
        before, after = read_manifest(base["bundle"]), read_manifest(counted)
        assert all(before.voices[v].variants["int8"].graph.sha256 != after.voices[v].variants["int8"].graph.sha256
                   for v in VOICES)
    failures = []
    for k in _kill_points(changes, every):
        case = tmp_path / f"kill{k}"
        bundle = case / "bundle"
        shutil.copytree(base["bundle"], bundle)
        job = _job(kind, base, bundle)
        r = _child(k, case, job)
        assert r.returncode == -signal.SIGKILL, (k, changes[k - 1], r.returncode, r.stderr[-2000:])
        problems = _usable(bundle)
        if not problems:
            _complete_run(job)
            problems = [f"after the next run: {x}" for x in _leftovers(bundle)] + _usable(bundle)
        failures += [f"killed before {changes[k - 1]} ({k}/{len(changes)}): {p}" for p in problems]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", ["quantize", "export"])
def test_kill_9_where_a_run_publishes_keeps_a_usable_bundle(base: dict[str, Path], tmp_path: Path, kind: str) -> None:
    _kill_and_check(base, tmp_path, kind, every=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["quantize", "export"])
def test_kill_9_before_any_change_keeps_a_usable_bundle(base: dict[str, Path], tmp_path: Path, kind: str) -> None:
    _kill_and_check(base, tmp_path, kind, every=True)


# ----------------------------------------------------------------------------------------------
# stale staging: a dead run's folder is removed by the next run, a live run's is kept
# ----------------------------------------------------------------------------------------------

STAGER = textwrap.dedent(r'''
    import os, signal, sys
    from pathlib import Path
    from sambert_deploy.utils import staging_beside
    tmp = staging_beside(Path(sys.argv[1]))
    (tmp / "half-written.onnx").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()  # alive until the test closes stdin
''')


def _stager(out: Path, how: str) -> tuple[subprocess.Popen[str], Path]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", STAGER, str(out), how], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, Path(p.stdout.readline().strip())


@pytest.mark.parametrize("kind", ["quantize", "export"])
def test_next_run_removes_dead_runs_staging_and_keeps_live_ones(base: dict[str, Path], tmp_path: Path,
                                                                kind: str) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(base["bundle"], bundle)
    dead_proc, dead = _stager(bundle, "die")
    dead_proc.wait()
    live_proc, live = _stager(bundle, "live")
    try:
        assert dead.is_dir() and live.is_dir()
        _complete_run(_job(kind, base, bundle))
        assert not dead.exists(), f"{dead.name}: its owner was killed, the next {kind} should have removed it"
        assert live.is_dir() and (live / "half-written.onnx").is_file(), "a live run's staging folder was touched"
    finally:
        assert live_proc.stdin is not None
        live_proc.stdin.close()
        live_proc.wait()
    assert not _usable(bundle)


def test_legacy_staging_is_removed_only_when_older_than_the_boot(base: dict[str, Path], tmp_path: Path) -> None:
    """Folders named by the previous version record no owner: one from before this boot is certainly
    stale; a recent one may belong to a run of that version still going, so it is kept (and logged)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(base["bundle"], bundle)
    old, recent = tmp_path / f".{bundle.name}.tmp-0badf00d", tmp_path / f".{bundle.name}.tmp-1badf00d"
    folder = bundle / read_manifest(bundle).voice(None).folder
    old_q, recent_q = folder / ".quantize-int8-abc_1234", folder / ".quantize-fp16-abc_5678"
    for d in (old, recent, old_q, recent_q):
        d.mkdir()
    for d in (old, old_q):
        os.utime(d, (0, 0))  # 1970: before any boot
    _complete_run(_job("quantize", base, bundle))
    assert not old.exists() and not old_q.exists()
    assert recent.is_dir() and recent_q.is_dir()


def test_manifest_names_no_staging_path_after_a_complete_run(base: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(base["bundle"], bundle)
    for kind in ("quantize", "export", "quantize"):
        _complete_run(_job(kind, base, bundle))
        text = (bundle / MANIFEST).read_text("utf-8")
        assert ".tmp-" not in text and ".quantize-" not in text
        assert not _leftovers(bundle) and not _usable(bundle)
