"""Preview ECAD Schedule: a schedule drawn as a steps x units grid (recomputed cells in their component's colour,
from the model family's record; reused cells dark), with its statistics."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ecad_core import families
from ..ecad_core.schedule import Schedule
from . import library
from .library import SCHEDULE_TYPE

# Longest side of the preview in pixels: a bigger schedule is drawn with smaller cells, then summarised.
MAX_PREVIEW_SIDE = 1024


def schedule_image(s: Schedule, cell: int = 4, max_side: int = MAX_PREVIEW_SIDE) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: one row per step, one column per unit; block boundaries as thin gaps.

    Cells are ``cell`` pixels while that fits in ``max_side``, else fewer (per axis); with more
    steps or units than ``max_side``, each pixel is the mean colour of a bin of steps x units."""
    eff = s.effective_bits()
    fam = families.find(s.layout.family)
    comps = [c for _, c in s.layout.iter_units()]
    col = np.array([fam.color(c) if fam else families.DEFAULT_COLOR for c in comps], np.float32)  # [U,3]
    grid = np.where(eff[..., None], col[None], np.float32(0.12))  # [S,U,3]
    fy, fx = (math.ceil(n / max_side) for n in grid.shape[:2])
    if fy > 1 or fx > 1:
        return torch.from_numpy(np.ascontiguousarray(_bin_mean(_bin_mean(grid, fy, 0), fx, 1)))[None]
    cy, cx = (max(1, min(cell, max_side // n)) for n in grid.shape[:2])
    img = np.repeat(np.repeat(grid, cy, axis=0), cx, axis=1)
    if cx > 1:  # darken the last column of each block for readability (not with 1-pixel cells)
        for _, sl in s.layout.block_slices():
            img[:, sl.stop * cx - 1, :] *= 0.5
    return torch.from_numpy(np.ascontiguousarray(img))[None]


def _bin_mean(a: np.ndarray, f: int, axis: int) -> np.ndarray:
    if f == 1:
        return a
    starts = np.arange(0, a.shape[axis], f)
    sizes = np.diff(np.append(starts, a.shape[axis])).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = len(sizes)
    return np.add.reduceat(a, starts, axis=axis) / sizes.reshape(shape)


def _picture_note(s: Schedule, max_side: int = MAX_PREVIEW_SIDE) -> str | None:
    fy, fx = math.ceil(s.steps / max_side), math.ceil(s.layout.n_units / max_side)
    if fy > 1 or fx > 1:
        return f"picture summarised: each pixel averages {fy} step(s) x {fx} unit(s)"
    return None


class PreviewECADSchedule:
    DESCRIPTION = "Shows a schedule as a steps x units grid (bright = recomputed, dark = reused) with statistics."
    CATEGORY = "ECAD"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "info")
    FUNCTION = "preview"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"schedule": (SCHEDULE_TYPE,)}}

    def preview(self, schedule):
        import nodes as comfy_nodes  # ComfyUI's own PreviewImage saves to temp and shows it

        img = schedule_image(schedule)
        note = _picture_note(schedule)
        text = library.info_text(schedule) + (f"\n{note}" if note else "")
        ui = comfy_nodes.PreviewImage().save_images(img, filename_prefix="ecad_schedule")["ui"]
        ui["text"] = [text]
        return {"ui": ui, "result": (img, text)}
