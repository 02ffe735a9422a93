"""The wheel ships every backend package (a sub-package missing from pyproject.toml imports fine from a
checkout but breaks `pip install`)."""
from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]


def test_every_ecad_core_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ecad_core").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_setup_stops_with_a_clear_message_when_the_disk_cannot_hold_torch(tmp_path):
    # A fresh checkout whose .venv has no torch: the venv stage must refuse before pip starts.
    import os
    import subprocess

    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup_env.sh").write_text((REPO / "scripts" / "setup_env.sh").read_text())
    fake_py = tmp_path / ".venv" / "bin" / "python"
    fake_py.parent.mkdir(parents=True)
    calls = tmp_path / "python-calls"
    fake_py.write_text(f'#!/bin/sh\necho "$*" >> {calls}\necho "- -"\n')
    fake_py.chmod(0o755)
    env = dict(os.environ, ECAD_SETUP_TORCH_DISK_GB="100000000")
    r = subprocess.run(["bash", "scripts/setup_env.sh", "venv"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not enough disk for torch 2.14.1" in r.stdout
    assert "about 100000000 GB needed" in r.stdout
    assert "pip" not in calls.read_text()  # only the version probe ran
