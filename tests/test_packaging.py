"""The wheel ships every backend package and ``py.typed`` (a sub-package missing from the wheel imports fine from
a checkout but breaks `pip install`)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_every_ecad_core_package_and_py_typed(tmp_path):
    import shutil
    import subprocess
    import sys
    import zipfile

    # build from a copy: a build in the checkout leaves build/ and *.egg-info behind
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".cache", ".git", "test-artifacts", "build", "*.egg-info", "__pycache__", "node_modules"
        ),
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "dist").glob("comfyui_ecad-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    found = {p.relative_to(REPO).as_posix() for p in (REPO / "ecad_core").rglob("*.py")}
    assert found <= names, f"missing from the wheel: {sorted(found - names)}"
    assert "ecad_core/py.typed" in names


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
    r = subprocess.run(
        ["bash", "scripts/setup_env.sh", "venv"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not enough disk for torch 2.14.1" in r.stdout
    assert "about 100000000 GB needed" in r.stdout
    assert "pip" not in calls.read_text()  # only the version probe ran
