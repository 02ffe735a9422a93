"""Where schedules live for the nodes: shipped presets and the user's own folder.

Shipped: ``<pack>/schedules``. User: ComfyUI's ``models/ecad_schedules`` folder
(registered with folder_paths, so extra_model_paths.yaml can add more), where
the Evolve node writes its fronts. Listings are re-read on every call (cached
by file modification time), so new files appear without a restart.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..ecad_core.errors import ScheduleError
from ..ecad_core.schedule import Schedule, load_schedule

log = logging.getLogger("ecad")

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "schedules"
FOLDER_NAME = "ecad_schedules"
SEP = " · "
PRETTY = {"pixart-alpha": "PixArt-α", "pixart-sigma": "PixArt-Σ", "flux-dev": "FLUX.1-dev",
          "flux-schnell": "FLUX.1-schnell"}
# files an Evolve search keeps beside its schedules (not schedules themselves)
SEARCH_BOOKKEEPING = ("front.json", "progress.json")
_cache: dict[str, tuple[float, Schedule | None]] = {}


def register_user_folder() -> None:
    import folder_paths
    if FOLDER_NAME not in folder_paths.folder_names_and_paths:
        path = os.path.join(folder_paths.models_dir, FOLDER_NAME)
        folder_paths.folder_names_and_paths[FOLDER_NAME] = ([path], {".json"})


def user_dirs() -> list[Path]:
    import folder_paths
    register_user_folder()
    return [Path(p) for p in folder_paths.get_folder_paths(FOLDER_NAME)]


def _files() -> list[tuple[str, Path]]:
    """(key, path): shipped files by stem, user files as 'user/<relative path without .json>'."""
    out = [(p.stem, p) for p in sorted(SHIPPED_DIR.glob("*.json"))]
    for d in user_dirs():
        if d.is_dir():
            for p in sorted(d.rglob("*.json")):
                if p.name in SEARCH_BOOKKEEPING or any(part.startswith(".") for part in p.relative_to(d).parts):
                    continue
                rel = p.relative_to(d).with_suffix("").as_posix()
                out.append((f"user/{rel}", p))
    return out


def _load_cached(path: Path) -> Schedule | None:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    hit = _cache.get(str(path))
    if hit and hit[0] == mtime:
        return hit[1]
    try:
        s = load_schedule(path)
    except ScheduleError as e:
        log.warning("ECAD: skipping unreadable schedule %s", e)
        s = None
    _cache[str(path)] = (mtime, s)
    return s


def speedup_of(s: Schedule) -> float | None:
    m = s.metrics or {}
    for key in ("ecad_latency_speedup", "expected_speedup"):
        v = m.get(key)
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    frac = m.get("compute_fraction")
    if isinstance(frac, (int, float)) and frac > 0:
        return 1.0 / frac
    return None


def label(key: str, s: Schedule) -> str:
    sp = speedup_of(s)
    parts = [key, PRETTY.get(s.model or "", s.family)]
    if sp:
        parts.append(f"{sp:.2f}×")
    return SEP.join(parts)


def options() -> list[str]:
    """Dropdown values: '<key> · <model> · <speedup>×'."""
    out = []
    for key, path in _files():
        s = _load_cached(path)
        if s is not None:
            out.append(label(key, s))
    return out


def options_fitting(layout) -> list[str]:
    """Dropdown values of the schedules whose layout (family and block counts) is ``layout``."""
    out = []
    for key, path in _files():
        s = _load_cached(path)
        if s is not None and s.layout == layout:
            out.append(label(key, s))
    return out


def key_of(value: str) -> str:
    return value.split(SEP)[0].strip()


def resolve(value: str) -> Schedule:
    """The schedule a dropdown value (or a bare key) names; ScheduleError if it is gone or broken."""
    key = key_of(value)
    for k, path in _files():
        if k == key:
            return load_schedule(path)
    raise ScheduleError(key, "no such ECAD schedule: not among the shipped presets nor in "
                             f"models/{FOLDER_NAME} (was it renamed or deleted?)")
