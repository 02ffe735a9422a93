"""Which ECAD layout a model FILE has, read from its safetensors header only (no weights loaded).

Used by the preset filter (``routes.py`` + ``web/ecad.js``): the frontend knows
only the loader's file name, so the server reads the tensor names of that file
and counts blocks the way the Apply node's adapters will. ComfyUI-format,
original and diffusers key names are understood, with or without a
checkpoint's ``model.diffusion_model.`` prefix. Anything unrecognised gives
None: the dropdown then lists every schedule and the Apply node checks at run
time as always. So does a header longer than MAX_HEADER (real ones are well
under a megabyte) and anything that is not a regular file. Results are cached by
(path, mtime, size). Which tensor names make which family is each family's
``detect`` (``ecad_core/families``); the container prefixes are stripped here.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import threading
from pathlib import Path

from .. import families
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


def layout_of_keys(keys: list[str]) -> tuple[Layout, str] | None:
    """(layout, model word) for the tensor names of a DiT, as the Apply node would patch it: the first family
    (``ecad_core.families``, in their order) that recognises them."""
    keys = _strip(keys)
    ks = set(keys)
    for fam in families.registered():
        found = fam.detect(keys, ks)
        if found is not None:
            counts, word = found
            return make_layout(fam.name, *counts), word
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
