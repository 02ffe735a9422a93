"""scripts/link_identical.py: the second venv's copies of the same wheels become hard links, nothing else changes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("link_identical", REPO / "scripts" / "link_identical.py")
assert _spec and _spec.loader
link_identical = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(link_identical)


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_identical_files_become_links_and_others_stay(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    big, other = os.urandom(5000), os.urandom(5000)
    _tree(a, {"torch/lib.so": big, "torch/x.py": big, "only_a": big, "mode": big})
    _tree(b, {"torch/lib.so": big, "torch/x.py": other, "only_b": big, "mode": big})
    (b / "mode").chmod(0o755)
    (b / "link").symlink_to(b / "only_b")
    (a / "link").write_bytes(big)

    linked, saved = link_identical.link_identical(a, b, min_bytes=1000)

    assert (linked, saved) == (1, 5000)
    assert (b / "torch/lib.so").stat().st_ino == (a / "torch/lib.so").stat().st_ino
    assert (b / "torch/lib.so").read_bytes() == big
    assert (b / "torch/x.py").stat().st_ino != (a / "torch/x.py").stat().st_ino  # same size, other bytes
    assert (b / "torch/x.py").read_bytes() == other
    assert (b / "mode").stat().st_ino != (a / "mode").stat().st_ino  # one inode cannot hold two modes
    assert (b / "mode").stat().st_mode & 0o777 == 0o755 and (a / "mode").stat().st_mode & 0o777 != 0o755
    assert (b / "link").is_symlink()
    assert sorted(p.name for p in b.iterdir()) == ["link", "mode", "only_b", "torch"]  # no temporary left
    # a second run finds nothing more to do
    assert link_identical.link_identical(a, b, min_bytes=1000) == (0, 0)


def test_small_files_are_left(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a, {"f": b"x" * 100})
    _tree(b, {"f": b"x" * 100})
    assert link_identical.link_identical(a, b) == (0, 0)


def test_main_refuses_a_missing_folder(tmp_path, capsys):
    assert link_identical.main([str(tmp_path), str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
