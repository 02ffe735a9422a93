"""scripts/make_thumbnails.py draws a card for every example workflow (it refuses to run when one lacks a recipe)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("make_thumbnails", REPO / "scripts/make_thumbnails.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_example_workflow_has_a_thumbnail_recipe():
    mod = _script()
    workflows = {p.stem for p in (REPO / "example_workflows").glob("*.json")}
    assert workflows == set(mod.THUMBS), "add the missing names to THUMBS in scripts/make_thumbnails.py"
    for name in sorted(workflows):
        assert mod.thumbnail(name).size == mod.SIZE
        assert (REPO / "example_workflows" / f"{name}.jpg").is_file()
