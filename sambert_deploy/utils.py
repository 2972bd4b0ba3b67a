"""Small torch-free helpers shared by the export side and the runtime."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BundleError

log = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    Reads ``VmHWM`` (the high-water mark of the current address space) where /proc exists:
    ``getrusage``'s ``ru_maxrss`` survives ``exec`` on Linux, so a child started by a big parent
    (the demo's exporter has torch loaded) would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # not on Windows, which has no /proc either

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


# ----------------------------------------------------------------------------------------------
# Staging and transactions. A run writes what it makes under a hidden staging name, then commits
# with one atomic rename; ``kill -9`` at any instant leaves the previous state or the new one. A
# staging name records its owner (pid and start time: a pid alone is reused), so the next run tells
# a killed run's leftovers (removed) from a live run's (kept).
# ----------------------------------------------------------------------------------------------

_OWNED = re.compile(r"(\d+)-(\d+)-[0-9a-f]+$")  # what follows a staging prefix: pid-start-random
_PID_TEMP = re.compile(r"^\..+\.(\d+)\.tmp(\.[A-Za-z0-9]+)?$")  # .NAME.PID.tmp[.ext]: a temp file named by pid
LOCK = ".sambert-deploy.lock"
_warned: set[Path] = set()


def _start_time(pid: int) -> int | None:
    """Start time of process ``pid`` (clock ticks since boot, from /proc); None if it does not exist.

    Without /proc (macOS) 0 stands for "alive, start unknown", so only a pid that is gone reads as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text("ascii")
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:  # exists, owned by someone else
            pass
        return 0
    except OSError:
        return 0  # cannot tell: keep whatever it owns
    # field 22 of proc(5), counted after the command name, which may itself hold spaces and parens
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_tag() -> str:
    """``pid-start`` of this process, as staging names record it."""
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}"


def owner_alive(tail: str) -> bool | None:
    """Whether the process recorded in a staging name's ``tail`` (``pid-start-random``) is still running;
    None when the tail records no owner (named by a version before owners were recorded)."""
    m = _OWNED.match(tail)
    if m is None:
        return None
    start = _start_time(int(m[1]))
    return start is not None and (start == 0 or int(m[2]) in (0, start))


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _is_stale(path: Path, tail: str) -> bool:
    alive = owner_alive(tail)
    if alive is not None:
        return not alive
    # No owner recorded: a folder last changed before this boot is certainly dead; a recent one may be
    # a run of the previous version still going, so it is kept and named once for the user to judge.
    boot = _boot_time()
    try:
        if boot is not None and path.lstat().st_mtime < boot:
            return True
    except OSError:
        return False
    if path not in _warned:
        _warned.add(path)
        log.warning("%s is a staging folder left by an earlier version, which recorded no owner; remove it "
                    "if no sambert-deploy run is writing there now", path)
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as e:  # a folder we may not write: the leftover stays, the run goes on
        log.warning("could not remove %s (%s)", path, e.strerror)


def remove_stale(folder: Path, prefixes: tuple[str, ...], pid_temps: bool = False) -> list[Path]:
    """Remove the entries of ``folder`` named ``PREFIX<owner>`` whose owner process is gone and, with
    ``pid_temps`` (a folder of ours, not the user's), ``.NAME.PID.tmp[.ext]`` temp files whose pid is
    gone. Returns what was removed; a live run's are kept."""
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        prefix = next((x for x in prefixes if p.name.startswith(x)), None)
        if prefix is not None:
            stale = _is_stale(p, p.name[len(prefix):])
        else:
            m = _PID_TEMP.match(p.name)
            stale = pid_temps and m is not None and p.is_file() and _start_time(int(m[1])) is None
        if stale:
            log.info("removing %s, left by a run that was killed", p)
            _remove(p)
            removed.append(p)
    return removed


def staging_folder(parent: Path, prefix: str) -> Path:
    """A fresh folder ``parent/PREFIX<pid>-<start>-<random>``. Raises ``OSError`` for the caller to word."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{prefix}{owner_tag()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def staging_beside(out: Path) -> Path:
    """A fresh hidden folder ``.OUT.tmp-<owner>`` next to ``out`` (the same filesystem, so
    :func:`swap_into_place` can rename it into place). Raises ``OSError`` for the caller to word."""
    return staging_folder(out.parent, f".{out.name}.tmp-")


def clean_beside(out: Path) -> list[Path]:
    """Undo what killed runs left next to ``out``: a half-done fallback swap is rolled back (``out``
    missing, its previous content set aside under ``.OUT.old-``), then stale staging is removed."""
    tmp, old = f".{out.name}.tmp-", f".{out.name}.old-"
    if not out.exists() and not out.is_symlink():
        try:
            set_aside = sorted((p for p in out.parent.iterdir() if p.name.startswith(old)
                                and owner_alive(p.name[len(old):]) is not True), key=lambda p: p.stat().st_mtime)
        except OSError:
            set_aside = []
        if set_aside:
            os.rename(set_aside[-1], out)
            log.warning("restored %s from %s: a run was killed while replacing it", out, set_aside[-1].name)
    return remove_stale(out.parent, (tmp, old))


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so a rename that publishes it publishes data,
    not empty files, after a power loss (ext4 and xfs may write the rename first)."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder on Windows cannot be opened: nothing to flush there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the data itself was flushed
    finally:
        os.close(fd)


def replace_durably(src: Path, dst: Path) -> None:
    """``os.replace(src, dst)`` with ``src`` flushed first and the rename flushed after: the commit
    point of a transaction. ``src`` and ``dst`` are on the same filesystem."""
    _fsync(src)
    os.replace(src, dst)
    _fsync(dst.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: a reader, or a crash at any instant, sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where this
    system or filesystem cannot, and the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    # An audit event as os.rename raises one: tests place a kill -9 exactly here.
    sys.audit("sambert_deploy.rename_exchange", str(a), str(b))
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def swap_into_place(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``, flushed to disk. A previous ``out`` is exchanged with
    it in one atomic step, so at every instant ``out`` holds the old folder or the new one; the old
    one, now under ``tmp``'s staging name, is removed afterwards (or by the next run's
    :func:`clean_beside` if this one is killed first). Where the system cannot exchange, the old
    folder is set aside under ``.OUT.old-<owner>`` first, and :func:`clean_beside` restores it if a
    kill falls between the two renames. Raises ``OSError`` for the caller to word."""
    fsync_tree(tmp)
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)
        _fsync(out.parent)
        return
    if _exchange(tmp, out):
        _fsync(out.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.parent / f".{out.name}.old-{owner_tag()}-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    _fsync(out.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s writer lock (one run writes a bundle at a time): a :class:`BundleError`
    naming the other run's pid if it is held. The lock is an flock, so a killed holder releases it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not serialized there
        yield
        return
    path = folder / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise BundleError(f"cannot lock {folder} for writing ({e.strerror}); check its permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 100).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise BundleError(f"{folder} is being written by another sambert-deploy run (pid {holder}); wait for "
                              "it to finish, then retry") from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us may have unlinked the file after we opened it: then this lock guards
        # nothing anyone else can find, so take the one now at the path.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} since {time.strftime('%H:%M:%S')}".encode("ascii"))
        yield
    finally:
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except FileNotFoundError:
            pass  # moved away with the folder it locked (export --force swapped it out)
        os.close(fd)
