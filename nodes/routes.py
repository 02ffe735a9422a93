"""HTTP routes of the frontend extension (``web/ecad.js``): the preset filter and embedded schedules.

``GET /ecad/presets?loader=<node type>&file=<file name>`` answers
``{"model": <description or null>, "options": [...]}``: the Apply node's
dropdown values that fit the model file the loader names ("off" first), or all
of them when the file cannot be probed (missing, not safetensors, unknown
architecture). The run-time check in the Apply node stays the authority.
The answer is computed in a worker thread: reading a model file's header and the
schedule files must not hold up ComfyUI's event loop (every other request).

``GET /ecad/schedule_text?preset=<value>`` answers ``{"key", "shipped", "text"}``: the text Apply and Load
embed in the workflow for one of the user's schedules ("" for shipped presets). ``POST /ecad/save_embedded``
with ``{"preset", "text"}`` saves a workflow's embedded copy into models/ecad_schedules (never replacing a file).
Both answer ``{"error": ...}`` with status 400 for a bad name or schedule.
"""

from __future__ import annotations

import asyncio
import logging

from ..ecad_core.errors import ScheduleError
from ..ecad_core.schedule.model_files import layout_of_file
from . import library

log = logging.getLogger("ecad")
OFF = "off"
# loader node type -> (widget holding the file name, folder_paths folder)
LOADERS = {
    "UNETLoader": ("unet_name", "diffusion_models"),
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "CheckpointLoader": ("ckpt_name", "checkpoints"),
    "ImageOnlyCheckpointLoader": ("ckpt_name", "checkpoints"),
}


def presets_for(loader: str, file_name: str) -> dict:
    import folder_paths

    everything = {"model": None, "options": [OFF] + library.options()}
    if loader not in LOADERS or not file_name:
        return everything
    path = folder_paths.get_full_path(LOADERS[loader][1], file_name)
    probed = layout_of_file(path) if path else None
    if probed is None:
        return everything
    layout, family = probed
    return {"model": f"{family}: {layout.describe()}", "options": [OFF] + library.options_fitting(layout)}


def answer(loader: str, file_name: str) -> dict:
    """presets_for, never raising: the filter is a convenience and must not break the page."""
    try:
        return presets_for(loader, file_name)
    except Exception as e:  # noqa: BLE001
        log.warning("ECAD: /ecad/presets failed (%s)", e)
        return {"model": None, "options": [OFF] + library.options(), "error": str(e)}


def register() -> bool:
    """Adds the route to ComfyUI's server; False when there is no server (e.g. a script importing nodes)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    if getattr(PromptServer, "instance", None) is None:
        return False

    @PromptServer.instance.routes.get("/ecad/presets")
    async def ecad_presets(request):
        q = request.rel_url.query
        body = await asyncio.to_thread(answer, q.get("loader", ""), q.get("file", ""))
        return web.json_response(body)

    @PromptServer.instance.routes.get("/ecad/schedule_text")
    async def ecad_schedule_text(request):
        preset = request.rel_url.query.get("preset", "")
        return _reply(web, await asyncio.to_thread(_guarded, library.embeddable_text, preset))

    @PromptServer.instance.routes.post("/ecad/save_embedded")
    async def ecad_save_embedded(request):
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not (isinstance(body, dict) and all(isinstance(body.get(k), str) for k in ("preset", "text"))):
            return web.json_response({"error": 'expected JSON {"preset": "...", "text": "..."}'}, status=400)
        return _reply(web, await asyncio.to_thread(_guarded, library.save_embedded, body["preset"], body["text"]))

    return True


def _guarded(fn, *args) -> dict:
    try:
        return fn(*args)
    except ScheduleError as e:
        return {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - a route must answer, never take the page down
        log.warning("ECAD: %s failed (%s)", fn.__name__, e)
        return {"error": f"{type(e).__name__}: {e}"}


def _reply(web, body: dict):
    return web.json_response(body, status=400 if "error" in body else 200)
