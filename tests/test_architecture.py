"""Rules of the code's shape, read from the source (no imports run): each one a test that names the
offending modules.

- No import cycle inside ``sambert_deploy``: every import counts, those inside functions too
  (a lazy import is still a dependency), except under ``if TYPE_CHECKING:`` (never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "sambert_deploy"


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``package`` (``a.b`` for ``a/b/__init__.py``)."""
    folder = PACKAGE_ROOT.parent.joinpath(*package.split("."))
    found = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, at any depth, leaving out ``if TYPE_CHECKING:`` bodies
    (their ``else`` branch runs, so it stays)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _imports(child)


def _targets(module: str, is_package: bool, stmt: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``stmt`` (in ``module``) imports."""
    if isinstance(stmt, ast.Import):
        names = [a.name for a in stmt.names]
    else:
        if stmt.level:
            base_parts = module.split(".") if is_package else module.split(".")[:-1]
            base_parts = base_parts[:len(base_parts) - (stmt.level - 1)]
            base = ".".join([*base_parts, *([stmt.module] if stmt.module else [])])
        else:
            base = stmt.module or ""
        # ``from pkg import name``: the submodule pkg.name where there is one, else pkg itself.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in stmt.names]
    out = set()
    for name in names:
        parts = name.split(".")
        for n in range(len(parts), 0, -1):  # the longest known prefix: ``import a.b.c`` needs a.b.c
            prefix = ".".join(parts[:n])
            if prefix in known:
                out.add(prefix)
                break
    return out


def import_graph(package: str) -> dict[str, set[str]]:
    mods = _modules(package)
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for stmt in _imports(tree):
            deps |= _targets(name, is_package, stmt, known)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_import_graph_reader_sees_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    """The reader itself, on source written here: a cycle made only by a function-level import is one;
    one made only under TYPE_CHECKING is not."""
    known = {"p", "p.a", "p.b", "p.c"}
    lazy = ast.parse("def f():\n    from .b import x\n")
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import y\nelse:\n"
                      "    from . import b\n")
    assert {t for s in _imports(lazy) for t in _targets("p.a", False, s, known)} == {"p.b"}
    assert {t for s in _imports(typed) for t in _targets("p.a", False, s, known)} == {"p.b"}
    assert cycles({"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": {"p.a"}}) == [["p.a", "p.b"]]
    assert cycles({"p.a": {"p.b"}, "p.b": set()}) == []


def test_package_has_no_import_cycle() -> None:
    graph = import_graph("sambert_deploy")
    assert {"sambert_deploy.runtime.backends.base", "sambert_deploy.frontend.reader"} <= set(graph)  # all read
    found = cycles(graph)
    assert not found, "import cycles in sambert_deploy (break each, e.g. move the shared part down):\n" + \
        "\n".join(" <-> ".join(c) for c in found)


# -- no private name of one of our modules read outside it ---------------------------------------------

REPO = PACKAGE_ROOT.parent
OWN_CODE = (PACKAGE_ROOT, REPO / "tests", REPO / "scripts")


def _private_names_defined(tree: ast.AST) -> set[str]:
    """``_names`` a module defines: its functions, classes, module-level names and ``self._x`` attributes."""
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(n.name)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
        elif (isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name)
              and n.value.id in ("self", "cls")):
            names.add(n.attr)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            names.add(n.target.id)
    return {x for x in names if x.startswith("_") and not x.startswith("__")}


def private_reads(files: dict[Path, ast.AST]) -> list[str]:
    """``obj._name`` reads and ``from m import _name`` imports of a private name that one of our modules
    defines, in a file that does not define it (names private to third-party code are theirs to judge)."""
    defined = {path: _private_names_defined(tree) for path, tree in files.items()}
    ours = set().union(*defined.values())
    found = []
    for path, tree in files.items():
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and n.attr in ours and n.attr not in defined[path] and not (
                    isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")):
                found.append(f"{path.relative_to(REPO)}:{n.lineno}: .{n.attr}")
            elif isinstance(n, ast.ImportFrom):
                found += [f"{path.relative_to(REPO)}:{n.lineno}: import {a.name}" for a in n.names
                          if a.name.startswith("_") and not a.name.startswith("__") and a.name in ours]
    return found


def test_private_names_stay_in_their_module() -> None:
    files = {p: ast.parse(p.read_text("utf-8")) for root in OWN_CODE for p in sorted(root.rglob("*.py"))}
    assert private_reads(files) == [], "expose what is needed as public, documented API"


def test_the_private_rule_finds_a_read(tmp_path: Path) -> None:
    owner = ast.parse("class A:\n    def __init__(self):\n        self._state = 1\n")
    reader = ast.parse("from m import _helper\n\ndef f(a):\n    return a._state\n")
    helper = ast.parse("def _helper():\n    pass\n")
    files = {REPO / "owner.py": owner, REPO / "reader.py": reader, REPO / "helper.py": helper}
    assert private_reads(files) == ["reader.py:1: import _helper", "reader.py:4: ._state"]


def test_runtime_modules_stay_small() -> None:
    """A runtime module over 400 lines is doing more than one job: split it."""
    sizes = {p.relative_to(REPO): len(p.read_text("utf-8").splitlines()) for p in _modules("sambert_deploy.runtime").values()}
    assert {p: n for p, n in sizes.items() if n > 400} == {}
