"""Writes workflows/api/<name>.json: the API-format prompt (what POST /prompt takes) of each UI workflow in
example_workflows/, for headless and scripted use.

The conversion is the test harness's ``ui_to_api`` against a live server's /object_info (it needs each node's
widget layout): by default a ComfyUI started here from .cache/ComfyUI with this pack (tests/comfy_harness),
``--url http://127.0.0.1:8188`` uses a running one with this pack loaded. tests/test_workflows.py checks that
the files equal the conversion, so rerun this after changing an example workflow. Run from the repo root:
``.venv/bin/python scripts/make_api_workflows.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from comfy_harness.server import ComfyServer, load_workflow, ui_to_api  # noqa: E402

EXAMPLES = REPO / "example_workflows"
API_DIR = REPO / "workflows" / "api"


def api_text(workflow: dict, object_info: dict) -> str:
    """The file's text: the prompt as the frontend's "Export (API)" lays it out."""
    return json.dumps(ui_to_api(workflow, object_info), indent=2, ensure_ascii=False) + "\n"


def write_all(object_info: dict) -> list[Path]:
    if "ApplyECADSchedule" not in object_info:
        raise SystemExit("the server has no ECAD nodes: load this pack (custom_nodes/comfyui-ecad)")
    API_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted(EXAMPLES.glob("*.json")):
        dst = API_DIR / src.name
        dst.write_text(api_text(load_workflow(src), object_info), encoding="utf-8")
        written.append(dst)
    # a prompt whose example workflow is gone would ship stale
    for stale in set(API_DIR.glob("*.json")) - set(written):
        stale.unlink()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running ComfyUI with this pack (default: start one from .cache/ComfyUI)")
    args = ap.parse_args()
    if args.url:
        with urllib.request.urlopen(args.url.rstrip("/") + "/object_info", timeout=60) as r:
            info = json.load(r)
    else:
        # object_info only: no models needed, no support pack
        with ComfyServer(ensure_models=False, support_pack=False) as srv:
            info = srv.object_info()
    for p in write_all(info):
        print("wrote", p.relative_to(REPO))


if __name__ == "__main__":
    main()
