"""Make TensorRT's type stubs usable by mypy: ``make lint`` type-checks the engine builder and the
TensorRT backend against them, on machines where TensorRT itself cannot be installed.

``tensorrt-stubs`` (PyPI, generated from the bindings) installs ``tensorrt/`` and ``tensorrt_bindings/``
as plain ``.pyi`` folders that mypy skips (no ``-stubs`` suffix, no ``py.typed``), and a few generated
signatures are not valid Python (a parameter named ``in``; a parameter without a default after ones
with defaults). This copies them into ``.typings/`` (git-ignored; ``mypy_path`` in pyproject.toml)
with those signatures repaired, nothing else changed.

    python scripts/tensorrt_stubs.py      # after: pip install --no-deps tensorrt-stubs
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
import sysconfig
from pathlib import Path

PACKAGES = ("tensorrt", "tensorrt_bindings")
ROOT = Path(__file__).resolve().parents[1]


def _split_params(params: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "[(" and 1 or (-1 if ch in "])" else 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def repair(line: str) -> str:
    """One stub line, valid Python afterwards (lines that already parse are returned unchanged)."""
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*:\s*)$", line)
    if not m:
        return line
    try:
        ast.parse(line.strip() + " ...")
        return line
    except SyntaxError:
        pass
    params = _split_params(m.group(2))
    seen_default = False
    fixed = []
    for p in params:
        p = re.sub(r"^(\s*)in:", r"\1in_:", p)  # a keyword is no parameter name
        if "=" in p:
            seen_default = True
        elif seen_default and ":" in p and not p.strip().startswith("*"):
            p = p + " = ..."
        fixed.append(p)
    return m.group(1) + ",".join(fixed) + m.group(3)


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    out = ROOT / ".typings"
    missing = [p for p in PACKAGES if not (site / p / "__init__.pyi").is_file()]
    if missing:
        print(f"tensorrt-stubs not installed in {site} (pip install --no-deps tensorrt-stubs)", file=sys.stderr)
        return 1
    shutil.rmtree(out, ignore_errors=True)
    repaired = 0
    for pkg in PACKAGES:
        for src in (site / pkg).rglob("*.pyi"):
            dst = out / pkg / src.relative_to(site / pkg)
            dst.parent.mkdir(parents=True, exist_ok=True)
            lines = src.read_text().splitlines(keepends=True)
            new = [repair(ln.rstrip("\n")) + ("\n" if ln.endswith("\n") else "") for ln in lines]
            repaired += sum(a != b for a, b in zip(lines, new, strict=True))
            dst.write_text("".join(new))
    print(f"TensorRT stubs in {out.relative_to(ROOT)} ({repaired} signature(s) repaired)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
