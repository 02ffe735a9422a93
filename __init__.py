"""comfyui-ecad: ECAD evolutionary caching for diffusion transformers in ComfyUI.

ComfyUI loads this file as the pack's entry point. The backend (ecad_core) does
not import ComfyUI; everything ComfyUI-specific is in nodes/.
"""

import importlib.util

if importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported outside ComfyUI (e.g. by pytest's package collection): the backend needs no nodes
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

# the frontend extension (web/ecad.js): the preset dropdown lists the schedules that fit the connected model
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
