"""The import rules of docs/architecture.md, checked on the syntax tree of every ecad_core module.

Every import counts, also one inside a function (it runs when the function does); imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOSTS = ("comfy", "folder_paths", "nodes", "server", "comfy_extras", "comfy_api")


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path, package: str = "ecad_core") -> dict[str, Path]:
    return {module_name(root, p): p for p in sorted((root / package).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import of a module that runs; ``from a import b`` counts as
    ``a.b`` when that is a module of the tree, else as ``a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in known else target, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _within(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    """Every broken import rule in ``root/ecad_core``, one line each (empty: all rules hold)."""
    mods = modules(root)
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    bad = []
    for m, path in mods.items():
        where = path.relative_to(root).as_posix()
        for target, line in imports(m, path, known):
            top = target.split(".")[0]
            if top in HOSTS:
                bad.append(f"{where}:{line}: ecad_core imports the host ({target}); ComfyUI glue belongs in nodes/")
            if _within(m, "ecad_core.search") and (
                top in ("diffusers", "transformers")
                or any(_within(target, p) for p in ("ecad_core.engine", "ecad_core.diffusers"))
            ):
                bad.append(
                    f"{where}:{line}: the search imports {target}; it scores schedules through an "
                    "Evaluator and never touches a model"
                )
            if (
                _within(m, "ecad_core.metrics")
                and _within(target, "ecad_core")
                and not any(_within(target, p) for p in ("ecad_core.metrics", "ecad_core.errors", "ecad_core._lazy"))
            ):
                bad.append(f"{where}:{line}: metrics import {target}; they import nothing above them but errors")
            if _within(m, "ecad_core.schedule") and top == "torch":
                bad.append(f"{where}:{line}: schedule/ imports torch; `ecad info` must not load it")
            if _within(m, "ecad_core.families") and (
                top in ("torch", "diffusers", "transformers")
                or (
                    _within(target, "ecad_core")
                    and not any(_within(target, p) for p in ("ecad_core.families", "ecad_core._registry"))
                )
            ):
                bad.append(
                    f"{where}:{line}: families/ imports {target}; a family record is plain data that every "
                    "layer reads, it imports nothing above it"
                )
            if target in known and target != m:
                graph[m].add(target)
    bad += [f"import cycle: {' -> '.join(c + [c[0]])}" for c in cycles(graph)]
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_ecad_core_keeps_its_import_rules():
    assert violations(REPO) == []


def test_the_checker_finds_each_planted_violation(tmp_path):
    files = {
        "ecad_core/__init__.py": "",
        "ecad_core/errors.py": "",
        "ecad_core/glue.py": "def f():\n    import folder_paths\n",
        "ecad_core/engine/__init__.py": "",
        "ecad_core/search/__init__.py": "",
        "ecad_core/search/loop.py": "from ..engine import CacheEngine\nimport diffusers\n",
        "ecad_core/metrics/__init__.py": "from ..errors import EcadError\nfrom ..search import loop\n",
        "ecad_core/schedule/__init__.py": "import torch\n",
        "ecad_core/a.py": "from . import b\n",
        "ecad_core/b.py": "from .a import x\n",
        "ecad_core/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import comfy\n"
        "    from . import c\n",
        "ecad_core/c.py": "from . import typed\n",
        "ecad_core/families/__init__.py": "from .._registry import Registry\n",
        "ecad_core/families/toy.py": "import torch\nfrom ..schedule import make_layout\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    found = violations(tmp_path)
    expected = [
        "ecad_core/glue.py:2: ecad_core imports the host (folder_paths)",
        "ecad_core/search/loop.py:1: the search imports ecad_core.engine",
        "ecad_core/search/loop.py:2: the search imports diffusers",
        "ecad_core/metrics/__init__.py:2: metrics import ecad_core.search.loop",
        "ecad_core/schedule/__init__.py:1: schedule/ imports torch",
        "ecad_core/families/toy.py:1: families/ imports torch",
        "ecad_core/families/toy.py:2: families/ imports ecad_core.schedule",
        "import cycle: ecad_core.a -> ecad_core.b -> ecad_core.a",
    ]
    for e in expected:
        assert any(f.startswith(e) for f in found), (e, found)
    assert len(found) == len(expected), found  # errors import is allowed; TYPE_CHECKING imports never count
