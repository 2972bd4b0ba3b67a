"""Shared by scripts/check_bitexact.py and scripts/bench_vs_rev.py: run the same code against two
revisions of the runtime, with the same .venv python, each in fresh processes.

* :func:`worktree`: a git worktree of a revision in a temp folder, removed afterwards (``git worktree
  prune``).
* :func:`run_child`: ``python SCRIPT --child ...`` with ``PYTHONPATH=<root>``; the child calls
  :func:`assert_origin` first, so an editable install (or anything else on ``sys.path``) that would
  shadow the revision under test fails loudly instead of silently measuring the wrong code. Returns
  the child's JSON and its own peak RSS (``os.wait4``'s ``ru_maxrss``: that child's, not the sum or
  max over every child).
* :func:`bundles`: the fixture voices exported once (and quantized to int8 + bf16, with the real-vocoder
  check) into a git-ignored cache, keyed on the fixture files' size and mtime; both revisions read the
  same bundles. The callers export with the baseline's exporter first: a newer runtime must read an
  older bundle, while an older runtime need not read a newer manifest (the other way round fails
  as soon as the manifest's schema grows).

Nothing here imports ``sambert_deploy``: the parent process must not pin either revision.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "revcheck"  # build/ is git-ignored
FIXTURES = Path(os.environ.get("SAMBERT_SHARED", REPO.parent / "shared")).resolve() / "kantts" / "fixtures"
DEFAULT_BASELINE = "fd2bc0a"
ORIGIN_ENV = "REVCHECK_EXPECT_ROOT"

# name -> (fixture set, vocoder folder, voice name)
VOICES = {
    "tiny": ("tiny", "voc_causal", "tiny_emo"),
    "tiny_nc": ("tiny", "voc_noncausal", "tiny_nc_emo"),
    "full": ("full", "voc_causal", "full_emo"),
}
QUANTIZE = "int8,bf16"


def add_revision_args(ap: Any) -> None:
    """The options both revision scripts take: what to compare, how the cached bundles are built, and the
    hidden --child mode each fresh process runs in."""
    import argparse

    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare against")
    ap.add_argument("--candidate", help="a revision, or a folder holding sambert_deploy/, instead of the working tree")
    ap.add_argument("--export-with", choices=("baseline", "current"), default="baseline",
                    help="whose exporter builds the cached bundles (the other is the fallback)")
    ap.add_argument("--rebuild-bundles", action="store_true", help="export the cached bundles again")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)


def python() -> str:
    """The .venv's python (the one both revisions run with)."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def git(*args: str, check: bool = True) -> str:
    p = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout.strip()


def resolve(rev: str) -> str:
    return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[tuple[str, Path]]:
    """(full sha, path) of a detached worktree of ``rev``; removed and pruned on exit."""
    sha = resolve(rev)
    tmp = Path(tempfile.mkdtemp(prefix="sambert-rev-"))
    path = tmp / "tree"
    git("worktree", "add", "--detach", "--quiet", str(path), sha)
    try:
        yield sha, path
    finally:
        git("worktree", "remove", "--force", str(path), check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        git("worktree", "prune", check=False)


@contextlib.contextmanager
def code_roots(baseline: str, candidate: str | None) -> Iterator[list[tuple[str, Path]]]:
    """[(label, root)] for the baseline revision and the candidate: a revision (another worktree), a
    folder holding a ``sambert_deploy`` package, or, when None, this working tree as it is (uncommitted
    changes included)."""
    with contextlib.ExitStack() as stack:
        base_sha, base_root = stack.enter_context(worktree(baseline))
        roots = [(f"baseline {baseline} ({base_sha[:9]})", base_root)]
        if candidate is None:
            dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
            roots.append((f"current tree ({resolve('HEAD')[:9]}{dirty})", REPO))
        elif (Path(candidate) / "sambert_deploy" / "__init__.py").is_file():  # a code root as it is
            roots.append((f"candidate {candidate}", Path(candidate).resolve()))
        else:
            sha, root = stack.enter_context(worktree(candidate))
            roots.append((f"candidate {candidate} ({sha[:9]})", root))
        yield roots


def assert_origin() -> str:
    """In a child: ``sambert_deploy`` must come from the root the parent meant; fail loudly otherwise."""
    want = Path(os.environ[ORIGIN_ENV]).resolve()
    import sambert_deploy

    got = Path(sambert_deploy.__file__).resolve()
    if not got.is_relative_to(want):
        sys.stderr.write(f"\nFATAL: sambert_deploy was imported from {got}, not from {want}.\n"
                         "Something on sys.path (an editable install's finder?) shadows PYTHONPATH; the "
                         "comparison would test the wrong code.\n")
        raise SystemExit(3)
    return str(got)


def run_child(root: Path, script: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``SCRIPT --child OUT_JSON ARGS`` with ``PYTHONPATH=root`` in a fresh process. Returns the
    JSON the child wrote plus ``_rss_mb`` (that child's ru_maxrss), ``_wall_s``, or ``error``."""
    with tempfile.TemporaryDirectory(prefix="revchild-") as tmp:
        out = Path(tmp) / "result.json"
        err_path = Path(tmp) / "stderr.txt"
        env = dict(os.environ, PYTHONPATH=str(root), **{ORIGIN_ENV: str(root)})
        env.pop("PYTHONHOME", None)
        t0 = time.perf_counter()
        with open(err_path, "wb") as err:
            p = subprocess.Popen([python(), str(script), "--child", str(out), *args], env=env, cwd=str(root),
                                 stdout=subprocess.DEVNULL, stderr=err)
            deadline, timed_out = t0 + timeout, False
            while True:
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    timed_out = True
                    p.kill()
                    pid, status, usage = os.wait4(p.pid, 0)
                    break
                time.sleep(0.05)
            p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        tail = err_path.read_text("utf-8", "replace").strip().splitlines()
        if p.returncode != 0 or not out.is_file():
            why = f"timed out after {timeout:.0f} s" if timed_out else f"exit {p.returncode}"
            fatal = [line for line in tail if line.startswith("FATAL")]
            return {"error": f"{why}: {(fatal or tail or ['no output'])[-1][:300]}", "stderr": tail[-30:],
                    "_wall_s": wall}
        result = json.loads(out.read_text("utf-8"))
    result["_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    result["_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["_wall_s"] = wall
    return result


# -- the bundles both revisions read ------------------------------------------------------------------

def _fixture_key(fix: Path, voc: str) -> str:
    h = hashlib.sha256(f"{QUANTIZE}|reference|{voc}".encode())
    for sub in ("am", voc):
        for f in sorted((fix / sub).rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(fix)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def bundles(names: list[str], exporters: list[tuple[str, Path]] | None = None, log: Any = print,
            rebuild: bool = False) -> dict[str, Path]:
    """Exported + quantized bundles of the named :data:`VOICES`, from the cache or built now (the full
    voice: ~4 min on 2 cores) by ``sambert-deploy export`` / ``quantize`` of the first of ``exporters``
    ([(label, code root)], default: this working tree) that succeeds (a tree in the middle of a
    refactor may not export; then the next one does). ``rebuild``: export again even if cached."""
    exporters = exporters or [("this tree", REPO)]
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run exporting the same voice: wait for it, then reuse
        return _bundles(names, exporters, log, rebuild)


def _bundles(names: list[str], exporters: list[tuple[str, Path]], log: Any, rebuild: bool) -> dict[str, Path]:
    out = {}
    for name in names:
        fixset, voc, voice = VOICES[name]
        fix = FIXTURES / fixset
        if not (fix / "am").is_dir():
            raise SystemExit(f"fixture set not found: {fix} (set SAMBERT_SHARED to the folder holding kantts/)")
        key = _fixture_key(fix, voc)
        dest = CACHE / f"{name}-{key}"
        if not rebuild and (dest / "manifest.json").is_file() and (dest / ".complete").is_file():
            out[name] = dest
            continue
        CACHE.mkdir(parents=True, exist_ok=True)
        for old in CACHE.glob(f"{name}-*"):  # an older export of this voice (fixtures changed)
            shutil.rmtree(old, ignore_errors=True)
        tmp = CACHE / f".tmp-{name}-{os.getpid()}"
        errors = []
        for label, root in exporters:
            t0 = time.perf_counter()
            log(f"exporting the {name} voice ({fix.name}/am + {voc}) into {dest} with {label}'s exporter ...")
            err = _export(root, fix, voc, voice, tmp)
            if err is None:
                break
            errors.append(f"{label}: {err}")
            log(f"  {label} could not export it: {err.strip().splitlines()[-1][:200]}")
        else:
            raise SystemExit("no exporter succeeded:\n" + "\n".join(errors))
        forced = _force_gates(tmp)
        if forced:
            log(f"  note: {', '.join(forced)} failed the quality gate on these random weights; the cache's manifest "
                "marks them passed so they can run (what is compared is the code, not the speech)")
        (tmp / ".complete").write_text(json.dumps({"key": key, "forced": forced, "exporter": label}))
        tmp.rename(dest)
        log(f"  done in {time.perf_counter() - t0:.0f} s")
        out[name] = dest
    return out


def _export(root: Path, fix: Path, voc: str, voice: str, tmp: Path) -> str | None:
    """Export + quantize with the code under ``root``; None, or what went wrong."""
    shutil.rmtree(tmp, ignore_errors=True)
    cli = [python(), "-m", "sambert_deploy.cli", "-q"]
    env = dict(os.environ, PYTHONPATH=str(root))
    steps = [[*cli, "export", "--am", str(fix / "am"), "--voc", str(fix / voc), "--name", voice, "-o", str(tmp)],
             # With the real-vocoder check: a runtime that requires its record (newer than fd2bc0a)
             # refuses variants quantized without it.
             [*cli, "quantize", str(tmp), "--precision", QUANTIZE]]
    for cmd in steps:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(root))
        if p.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            return f"{cmd[4]} failed: {p.stdout[-1000:]}{p.stderr[-2000:]}"
    return None


def _force_gates(bundle: Path) -> list[str]:
    """Mark failed variants passed (as tests/test_precision.py's _force does, at every level of the quality
    record: passed, status, failures); returns which were."""
    p = bundle / "manifest.json"
    d = json.loads(p.read_text("utf-8"))
    forced = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            if o.get("passed") is False:
                o["passed"] = True
            if o.get("status") == "failed":
                o["status"] = "passed"
            if isinstance(o.get("failures"), list):
                o["failures"] = []
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    for vname, v in d["voices"].items():
        for prec, var in v.get("variants", {}).items():
            q = var["quality"]
            if not q.get("passed"):
                walk(q)
                forced.append(f"{vname} {prec}")
    if forced:
        p.write_text(json.dumps(d), "utf-8")
    return forced


def bf16_unavailable() -> str | None:
    """Why BF16 cannot be compared here (None if it can): the test suite's rule (tests/test_openvino.py)."""
    try:
        import openvino as ov
    except ImportError:
        return "openvino is not installed (pip install '.[openvino]')"
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        return f"this CPU has no BF16 (OpenVINO's OPTIMIZATION_CAPABILITIES: {', '.join(caps)})"
    return None
