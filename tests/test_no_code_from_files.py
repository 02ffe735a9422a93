"""Nothing from a file runs as code: no pickle, eval, exec; torch.load only with weights_only=True; np.load only with
allow_pickle=False. Checked on the syntax tree of every Python file of the pack (comments and strings do not count,
``model.eval()`` is not the builtin), and by pattern in its shell and JavaScript files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["ecad_core", "nodes", "tests", "bench", "scripts", "web", "__init__.py"]
# modules whose loaders rebuild objects by running code named in the data
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal", "jsonpickle"}

# (file, rule, text of the line): each one a legitimate mention, with the reason
ALLOWED = {
    # Ray's own transport: the test registers its module so Ray ships the fault-injecting evaluator factory to
    # worker processes by value, over Ray's object store; nothing is read from a file.
    ("tests/test_search_ray.py", "pickle", "ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])"),
}


def _dotted(node, aliases) -> str | None:
    """``np.load`` -> ``numpy.load`` (through the file's import aliases), or None for anything but names."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _kw_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def findings_in_source(src: str) -> list[tuple[int, str, str]]:
    """(line, rule, why) for each way the Python source ``src`` could run code from a file."""
    tree = ast.parse(src)
    aliases: dict[str, str] = {}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    out.append((line, "pickle", f"imports {a.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in UNSAFE_MODULES:
                out.append((line, "pickle", f"imports from {node.module}"))
            for a in node.names:
                if (node.module, a.name) in {
                    ("torch", "load"),
                    ("numpy", "load"),
                    ("builtins", "eval"),
                    ("builtins", "exec"),
                }:
                    out.append((line, "import", f"imports {node.module}.{a.name} under another name"))
        elif isinstance(node, ast.Attribute):
            name = _dotted(node, aliases)
            if name and any(p in UNSAFE_MODULES for p in name.split(".")[:-1]):
                out.append((line, "pickle", f"uses {name}"))
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func, aliases)
        if (isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec")) or func in (
            "builtins.eval",
            "builtins.exec",
        ):
            out.append((line, "eval", f"calls {func}()"))
        elif func in ("torch.load",) and not _kw_is(node, "weights_only", True):
            out.append((line, "torch.load", "torch.load without weights_only=True"))
        elif func in ("torch.jit.load",):
            out.append((line, "torch.load", "torch.jit.load runs TorchScript from the file"))
        elif func in ("numpy.load",) and not _kw_is(node, "allow_pickle", False):
            out.append((line, "np.load", "np.load without allow_pickle=False"))
        elif (
            func in ("pandas.read_pickle", "importlib.import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).split(".")[0] in UNSAFE_MODULES | {"pickle"}
        ) or func == "pandas.read_pickle":
            out.append((line, "pickle", f"{func}({ast.unparse(node.args[0]) if node.args else ''})"))
    return sorted(set(out))


# shell and JavaScript: no syntax tree, patterns (a line of a Python snippet in a shell script counts too)
TEXT_PATTERNS = {
    "pickle": re.compile(r"\b(import\s+(c|_)?pickle|from\s+(c|_)?pickle\s+import|(c|_)?pickle\.\w+|dill\.load)"),
    "eval": re.compile(r"(?<![.\w])(eval|exec)\s*\(|\bnew\s+Function\s*\("),
    "torch.load": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "np.load": re.compile(r"\bnp\.load\((?![^)]*allow_pickle\s*=\s*False)"),
}


def findings_in_text(text: str) -> list[tuple[int, str, str]]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        code = line.split("//")[0] if not line.lstrip().startswith("#") else ""
        for rule, pat in TEXT_PATTERNS.items():
            if pat.search(code):
                out.append((i, rule, line.strip()))
    return out


def _files():
    for entry in SCANNED:
        p = REPO / entry
        paths = [p] if p.is_file() else sorted(p.rglob("*"))
        for f in paths:
            if (
                f.is_file()
                and f.suffix in (".py", ".sh", ".js")
                and "__pycache__" not in f.parts
                and "results" not in f.relative_to(REPO).parts[:2]
            ):
                yield f


def pack_findings() -> list[tuple[str, int, str, str, str]]:
    """(file, line, rule, why, text of the line) over the whole pack."""
    out = []
    for f in _files():
        rel = f.relative_to(REPO).as_posix()
        text = f.read_text(encoding="utf-8")
        lines = text.splitlines()
        found = findings_in_source(text) if f.suffix == ".py" else findings_in_text(text)
        for line, rule, why in found:
            out.append((rel, line, rule, why, lines[line - 1].strip() if line else ""))
    return out


def test_nothing_in_the_pack_runs_code_from_a_file():
    scanned = list(_files())
    assert len(scanned) > 50 and any(f.suffix == ".sh" for f in scanned) and any(f.suffix == ".js" for f in scanned)
    bad = [
        f"{rel}:{line}: {why}: {text}"
        for rel, line, rule, why, text in pack_findings()
        if (rel, rule, text) not in ALLOWED
    ]
    assert not bad, "code from files (see tests/test_no_code_from_files.py):\n" + "\n".join(bad)


def test_every_allowlisted_line_still_exists():
    found = {(rel, rule, text) for rel, _, rule, _, text in pack_findings()}
    assert ALLOWED <= found, f"stale allowlist entries: {sorted(ALLOWED - found)}"


@pytest.mark.parametrize(
    "src, rule",
    [
        ("import pickle\npickle.load(open('f', 'rb'))", "pickle"),
        ("with open(p, 'rb') as f:\n    obj = __import__('pickle').load(f)", "pickle"),
        ("import pickle as p\np.loads(b)", "pickle"),
        ("from pickle import loads\nloads(b)", "pickle"),
        ("import dill\ndill.load(f)", "pickle"),
        ("import ray\nray.cloudpickle.loads(b)", "pickle"),
        ("import pandas as pd\npd.read_pickle('x.pkl')", "pickle"),
        ("import torch\nsd = torch.load(p)", "torch.load"),
        ("import torch\nsd = torch.load(p, map_location='cpu', weights_only=False)", "torch.load"),
        ("import torch\nsd = torch.load(\n    p,\n    map_location='cpu',\n)", "torch.load"),
        ("import torch as T\nT.load(p)", "torch.load"),
        ("import torch\ntorch.jit.load(p)", "torch.load"),
        ("from torch import load as tl\ntl(p)", "import"),
        ("import numpy as np\nnp.load(p)", "np.load"),
        ("import numpy\nnumpy.load(p, allow_pickle=True)", "np.load"),
        ("x = eval(text)", "eval"),
        ("exec(code, {})", "eval"),
        ("import builtins\nbuiltins.exec(code)", "eval"),
    ],
)
def test_the_check_finds_each_kind(src, rule):
    assert rule in {r for _, r, _ in findings_in_source(src)}, findings_in_source(src)


@pytest.mark.parametrize(
    "src",
    [
        "model.eval()\nnet.train().eval()",
        "import torch\nsd = torch.load(p, map_location='cpu', weights_only=True)",
        "import numpy as np\na = np.load(p, allow_pickle=False)",
        "# pickle.load(f) in a comment\ns = 'torch.load(p) and eval(x) in a string'",
        "from safetensors.torch import load_file\nload_file(p)",
        "import json\njson.load(f)",
    ],
)
def test_the_check_leaves_safe_code_alone(src):
    assert findings_in_source(src) == []


@pytest.mark.parametrize(
    "line, hit",
    [
        ("python -c \"import pickle; pickle.load(open('f', 'rb'))\"", True),
        ("const x = eval(text);", True),
        ("const f = new Function('return 1');", True),
        ("python -c \"import torch; torch.load('a.pt')\"", True),
        ("python -c \"import torch; torch.load('a.pt', weights_only=True)\"", False),
        ("node.widgets.eval_mode = 1;  // no call", False),
        ("# eval(x) in a shell comment", False),
    ],
)
def test_the_text_check(line, hit):
    assert bool(findings_in_text(line)) is hit
