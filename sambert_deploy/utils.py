"""Small torch-free helpers shared by the export side and the runtime."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sys
from pathlib import Path


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


def staging_beside(out: Path) -> Path:
    """A fresh hidden folder next to ``out`` (the same filesystem, so it can be renamed into place with
    :func:`swap_into_place`). Raises ``OSError`` for the caller to turn into its own error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``. A previous ``out`` is set aside first and removed only
    once the new one is in; if the rename fails it is put back, so a user never loses what was there.
    Raises ``OSError`` for the caller to turn into its own error."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
