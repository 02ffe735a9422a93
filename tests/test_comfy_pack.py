"""What the registry ships (issue #20, point 5): `comfy node pack` (comfy-cli, pinned in the test extra) on this
repository's files honours .comfyignore (no tests/, bench/), the zip has everything the pack needs, and
unpacked into a fresh ComfyUI's custom_nodes it loads and runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from test_comfy_harness import _read_latent, ksampler_prompt

from comfy_harness import make_tiny
from comfy_harness.server import ComfyServer
from ecad_core import Schedule, load_schedule, make_layout

REPO = Path(__file__).resolve().parents[1]
COMFY_CLI = Path(sys.executable).with_name("comfy")


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """node.zip made by `comfy node pack` from a copy of the working tree (its tracked and new files, as git
    lists them), so the test sees uncommitted edits the way CI sees a commit."""
    if not COMFY_CLI.exists():
        pytest.skip(f"comfy-cli is not installed ({COMFY_CLI}): pip install -e '.[test]'")
    tmp = tmp_path_factory.mktemp("pack")
    src = tmp / "comfyui-ecad"
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    for cmd in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *cmd], cwd=src, check=True, capture_output=True)
    home = tmp / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), DO_NOT_TRACK="1")
    r = subprocess.run(
        [str(COMFY_CLI), "--skip-prompt", "node", "pack"], cwd=src, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return src / "node.zip"


def test_the_zip_leaves_out_the_developers_parts(packed):
    names = zipfile.ZipFile(packed).namelist()
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"tests", "bench", "scripts", ".ci", "test-artifacts"}, sorted(tops)
    assert {"__init__.py", "pyproject.toml", "README.md", "nodes", "ecad_core", "schedules", "web"} <= tops
    for p in (REPO / "schedules").glob("*.json"):
        assert f"schedules/{p.name}" in names
    for p in (REPO / "example_workflows").iterdir():
        assert f"example_workflows/{p.name}" in names
    # the API prompts of the same workflows, for headless use
    api = sorted(p.name for p in (REPO / "workflows" / "api").glob("*.json"))
    assert api and all(f"workflows/api/{n}" in names for n in api) and "workflows/README.md" in names
    for node in ("ApplyECADSchedule", "LoadECADSchedule", "PreviewECADSchedule", "EvolveECADSchedule"):
        assert f"web/docs/{node}.md" in names
    assert "web/ecad.js" in names and "web/icon.png" in names
    # the icon the registry shows is the file in the repository
    icon = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["Icon"]
    assert icon.startswith("https://") and icon.endswith("/web/icon.png")


@pytest.mark.comfy
@pytest.mark.slow
def test_the_zip_installs_and_runs_in_a_fresh_comfyui(packed, comfy_dir, comfy_models, tmp_path):
    base = tmp_path / "base"
    pack = base / "custom_nodes" / "comfyui-ecad"
    pack.mkdir(parents=True)
    zipfile.ZipFile(packed).extractall(pack)
    user = base / "models" / "ecad_schedules"
    lay = make_layout("pixart", 2)
    Schedule.full(lay, 4, name="from-zip").save(user / "from-zip.json")
    with ComfyServer(
        base, comfy_dir=comfy_dir, models_root=make_tiny.DEFAULT_MODELS_ROOT, ensure_models=False, load_repo_pack=False
    ) as srv:
        info = srv.object_info()
        for node in ("ApplyECADSchedule", "LoadECADSchedule", "PreviewECADSchedule", "EvolveECADSchedule"):
            assert node in info, srv.log_text()[-3000:]
            assert info[node]["python_module"] == "custom_nodes.comfyui-ecad"
        assert not [ln for ln in srv.log_text().splitlines() if "IMPORT FAILED" in ln and "ecad" in ln]
        assert any(
            o.startswith("pixart-alpha-256-fast · ")
            for o in info["ApplyECADSchedule"]["input"]["required"]["preset"][0]
        )
        p = ksampler_prompt("ecad_tiny_pixart_alpha", "zip", 5)
        p["5"]["inputs"]["steps"] = 4
        for k in ("7", "8", "9"):
            p.pop(k)
        p["20"] = {
            "class_type": "ApplyECADSchedule",
            "inputs": {"model": ["1", 0], "preset": "user/from-zip", "offload_cache_to_cpu": False},
        }
        p["5"]["inputs"]["model"] = ["20", 0]
        entry = srv.run(p, timeout=300)
        assert _read_latent(srv.output_files(entry, "latents")[0]).isfinite().all()
        assert "ECAD from-zip: 0/" in srv.log_text()  # all recomputed: nothing reused
        assert load_schedule(user / "from-zip.json").name == "from-zip"
