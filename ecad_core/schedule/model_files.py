"""Which ECAD layout a model FILE has, read from its safetensors header only (no weights loaded).

Used by the preset filter (``routes.py`` + ``web/ecad.js``): the frontend knows
only the loader's file name, so the server reads the tensor names of that file
and counts blocks the way the Apply node's adapters will. ComfyUI-format,
original and diffusers key names are understood, with or without a
checkpoint's ``model.diffusion_model.`` prefix. Anything unrecognised gives
None: the dropdown then lists every schedule and the Apply node checks at run
time as always. So does a header longer than MAX_HEADER (real ones are well
under a megabyte) and anything that is not a regular file. Results are cached by
(path, mtime, size).
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import threading
from pathlib import Path

from .layout import Layout, make_layout

# Real headers (FLUX.1-dev, a full SD3.5 checkpoint) are a few hundred KB; a bigger one is not parsed.
MAX_HEADER = 10 * 1024 * 1024
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
CACHE_SIZE = 256
_cache: dict[tuple, tuple[Layout, str] | None] = {}
_cache_lock = threading.Lock()


def header_keys(path: str | Path) -> list[str]:
    """Tensor names of a .safetensors file; [] when it is not one (or unreadable, or its header is huge)."""
    try:
        # non-blocking open + fstat: a FIFO or device never gets read (it could block forever)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return []
            raw = f.read(8)
            if len(raw) != 8:
                return []
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > MAX_HEADER:
                return []
            head = json.loads(f.read(n))
    except (OSError, ValueError, RecursionError):
        return []
    return [k for k in head if k != "__metadata__"] if isinstance(head, dict) else []


def _strip(keys: list[str]) -> list[str]:
    for p in PREFIXES:
        inner = [k[len(p) :] for k in keys if k.startswith(p)]
        if inner:
            return inner
    return keys


def _count(keys: list[str], prefix: str) -> int:
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(idx) + 1 if idx else 0


def layout_of_keys(keys: list[str]) -> tuple[Layout, str] | None:
    """(layout, model family word) for the tensor names of a DiT, as the Apply node would patch it."""
    keys = _strip(keys)
    ks = set(keys)
    if "double_blocks.0.img_attn.qkv.weight" in ks and "distilled_guidance_layer.in_proj.weight" not in ks:
        if "img_in.weight" in ks and not any(k.startswith("txt_in.individual_token_refiner") for k in ks):
            return make_layout("flux", _count(keys, "double_blocks."), _count(keys, "single_blocks.")), "flux"
    if "x_embedder.proj.weight" in ks and "y_embedder.y_proj.fc1.weight" in ks and _count(keys, "blocks."):
        return make_layout("pixart", _count(keys, "blocks.")), "pixart"
    if "caption_projection.linear_1.weight" in ks and _count(keys, "transformer_blocks."):  # diffusers PixArt
        return make_layout("pixart", _count(keys, "transformer_blocks.")), "pixart"
    if "context_embedder.weight" in ks and _count(keys, "single_transformer_blocks."):  # diffusers FLUX
        return make_layout(
            "flux", _count(keys, "transformer_blocks."), _count(keys, "single_transformer_blocks.")
        ), "flux"
    if "joint_blocks.0.context_block.attn.qkv.weight" in ks:  # SD3 / SD3.5
        return make_layout("dit_blocks", _count(keys, "joint_blocks.")), "sd3"
    if "head.modulation" in ks and _count(keys, "blocks."):  # Wan
        return make_layout("dit_blocks", _count(keys, "blocks.")), "wan"
    return None


def layout_of_file(path: str | Path) -> tuple[Layout, str] | None:
    """layout_of_keys of the file's header; cached by (path, mtime, size), so a header is read once."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    keys = header_keys(path)
    result = layout_of_keys(keys) if keys else None
    with _cache_lock:
        if len(_cache) >= CACHE_SIZE:
            _cache.pop(next(iter(_cache)))  # oldest first
        _cache[key] = result
    return result
