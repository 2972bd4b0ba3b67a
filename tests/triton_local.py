"""A real ``tritonserver`` on this machine without a container: the one bundled in the ``nvidia-pytriton``
wheel (0.7.0: Triton 2.51 with the Python backend), for tests/test_triton.py, scripts/bench_triton.py and
local trials. A test harness, so it lives with the tests, not in the installed package.

The wheel pins numpy < 2, so it lives in a virtual environment of its own (``make triton-env`` writes
``.venv-triton``); that environment also holds the project's runtime and is the model's Python
(``EXECUTION_ENV_PATH``): the 2.51 stub corrupts tensors under numpy 2 (docs/triton.md). CPU only; the
CUDA warnings it prints without a driver are harmless.

What the server needs here, found by trial (docs/triton.md): a backend folder ``python/`` of *symlinks*
to the wheel's backend library, its utils module and the stub for the model environment's Python
version (a copied stub cannot find the wheel's bundled libcudart and the server hangs at "loading"),
and, when that Python is a pyenv-style build, its own ``lib`` folder on ``LD_LIBRARY_PATH`` (else the
stub loads the system's libpython).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sambert_deploy.errors import BackendUnavailableError

log = logging.getLogger(__name__)

PYTRITON_VERSION = "0.7.0"
MAKE_TARGET = "make triton-env"


@dataclass(frozen=True)
class PythonEnv:
    """The Python environment the model runs in, as the stub needs it."""

    prefix: Path  # the environment folder (EXECUTION_ENV_PATH)
    version: str  # "3.11": picks the stub
    libdir: Path | None  # holds libpython when the interpreter is a shared build outside the system's paths

    @classmethod
    def of(cls, prefix: str | Path) -> PythonEnv:
        python = Path(prefix) / "bin" / "python"
        if not python.exists():
            raise BackendUnavailableError(f"no Python environment at {prefix} (no bin/python); create it with "
                                          f"{MAKE_TARGET}")
        code = ("import json, sys, sysconfig; print(json.dumps([f'{sys.version_info[0]}.{sys.version_info[1]}', "
                "sysconfig.get_config_var('LIBDIR'), sysconfig.get_config_var('INSTSONAME')]))")
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=True)
        version, libdir, soname = json.loads(out.stdout)
        lib = Path(libdir) if libdir and soname and (Path(libdir) / soname).exists() else None
        return cls(Path(prefix).absolute(), version, lib)


@dataclass(frozen=True)
class TritonInstall:
    """``tritonserver`` and the Python backend inside an installed nvidia-pytriton wheel."""

    root: Path  # site-packages/pytriton/tritonserver

    @property
    def server(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def stub(self, version: str) -> Path:
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"

    @classmethod
    def find(cls, venv: str | Path) -> TritonInstall:
        """In the virtual environment ``venv``; raises naming ``make triton-env`` when it is not there."""
        hits = sorted(Path(venv).glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
        if not hits:
            raise BackendUnavailableError(f"no tritonserver in {venv} (nvidia-pytriton=={PYTRITON_VERSION}); install "
                                          f"it with {MAKE_TARGET}")
        return cls(hits[0].parent.parent)

    def backend_directory(self, dest: Path, python_version: str) -> Path:
        """``dest/python/`` with symlinks to the backend, its utils and the stub for ``python_version``."""
        stub = self.stub(python_version)
        if not stub.exists():
            raise BackendUnavailableError(f"nvidia-pytriton has no Python backend stub for Python {python_version} "
                                          f"(looked for {stub}); use a Python 3.8-3.13 environment for the model")
        py = dest / "python"
        py.mkdir(parents=True, exist_ok=True)
        for src in (self.root / "backends" / "python" / "libtriton_python.so",
                    self.root / "backends" / "python" / "triton_python_backend_utils.py", stub):
            link = py / src.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(src)
        return dest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerOptions:
    """How to start the server. Loopback only, HTTP off, metrics off (or on a loopback port), no config
    auto-completion (0.2 s instead of 1-2 s to ready), a short exit timeout so SIGTERM ends it in seconds."""

    grpc_port: int = 0  # 0: a free one
    metrics_port: int | None = None  # None: metrics off; 0: on a free loopback port
    ready_timeout_s: float = 120.0
    exit_timeout_s: int = 5
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


class TritonServer:
    """A ``tritonserver`` process serving ``repo``; a context manager. ``start()`` waits until every model
    is ready or the deadline passes, and kills the process group it started on any failure."""

    def __init__(self, install: TritonInstall, repo: str | Path, model_env: PythonEnv, workdir: str | Path,
                 options: ServerOptions | None = None):
        self.install, self.repo, self.model_env = install, Path(repo), model_env
        self.workdir = Path(workdir)
        self.options = options or ServerOptions()
        self.grpc_port = self.options.grpc_port or free_port()
        m = self.options.metrics_port
        self.metrics_port = None if m is None else (m or free_port())
        self.log_path = self.workdir / "tritonserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        backends = self.install.backend_directory(self.workdir / "backends", self.model_env.version)
        metrics = ["--allow-metrics=false"] if self.metrics_port is None else [
            "--allow-metrics=true", "--allow-gpu-metrics=false", "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}"]
        return [str(self.install.server), f"--model-repository={self.repo.resolve()}",
                f"--backend-directory={backends}", "--allow-http=false", *metrics,
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}", "--disable-auto-complete-config",
                f"--exit-timeout-secs={self.options.exit_timeout_s}", *self.options.extra_args]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub starts `python3` from PATH (PYTHONPATH is not passed on): the model's environment
        # first. EXECUTION_ENV_PATH in config.pbtxt, when set, activates the same environment anyway.
        env["PATH"] = f"{self.model_env.prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        if self.model_env.libdir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.model_env.libdir),
                                                                 env.get("LD_LIBRARY_PATH", "")) if p)
        env.update(self.options.env)
        return env

    def start(self) -> TritonServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        self._log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        # A session of its own: on failure the whole group (server and model stubs) is killed by its id.
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.environment(),
                                     start_new_session=True)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.kill()
            raise
        self.startup_s = time.perf_counter() - t0
        log.info("tritonserver pid %d ready at %s in %.2f s", self.proc.pid, self.url, self.startup_s)
        return self

    def _wait_ready(self, t0: float) -> None:
        import tritonclient.grpc as grpcclient

        if self.proc is None:
            raise RuntimeError("_wait_ready before the process started")
        deadline = t0 + self.options.ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise BackendUnavailableError(f"tritonserver exited with code {self.proc.returncode} before it "
                                              f"was ready; its log: {self.log_path}\n{self.log_tail()}")
            # A fresh channel per try: a channel that failed to connect backs off (1 s, then longer) and
            # would report the server seconds after it is ready.
            client = grpcclient.InferenceServerClient(self.url)
            try:
                if client.is_server_ready():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            finally:
                client.close()
            if time.perf_counter() > deadline:
                raise BackendUnavailableError(f"tritonserver not ready after {self.options.ready_timeout_s:.0f} s; "
                                              f"its log: {self.log_path}\n{self.log_tail()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def pids(self) -> list[int]:
        """The server and its model stubs (its child processes)."""
        if self.proc is None:
            return []
        try:
            import psutil

            p = psutil.Process(self.proc.pid)
            return [p.pid, *(c.pid for c in p.children(recursive=True))]
        except Exception:  # noqa: BLE001 - psutil missing or the process is gone
            return [self.proc.pid]

    def rss_mb(self) -> dict[int, float]:
        """Resident memory of the server and each stub, MiB (from /proc)."""
        out = {}
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status", encoding="ascii") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            out[pid] = int(line.split()[1]) / 1024
            except OSError:
                pass
        return out

    def stop(self) -> float:
        """SIGTERM and wait (Triton unloads the models, which close their Synthesizers); SIGKILL to the
        group if it has not ended within the exit timeout plus a margin. Returns seconds taken."""
        t0 = time.perf_counter()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.options.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver pid %d did not stop on SIGTERM; killing it", self.proc.pid)
        self.kill()
        return time.perf_counter() - t0

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group we created: the server and its stubs
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

