"""Where schedules live for the nodes: shipped presets and the user's own folder.

Shipped: ``<pack>/schedules``. User: ComfyUI's ``models/ecad_schedules`` folder
(registered with folder_paths, so extra_model_paths.yaml can add more), where
the Evolve node writes its fronts. Listings are re-read on every call (cached
by file modification time and size), so new files appear without a restart.
A file that cannot be read is left out of the listings and logged once (file and
reason); it never affects the other files or the nodes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from pathlib import Path

from ..ecad_core import families
from ..ecad_core.costs import LATENCY_COST_FILE
from ..ecad_core.errors import ScheduleError
from ..ecad_core.schedule import (
    MAX_FILE_BYTES,
    Schedule,
    file_error,
    load_schedule,
    loads_schedule,
    one_line,
    read_regular_file,
)
from ..ecad_core.search.checkpoint import CHECKPOINT_FILE, LEGACY_CHECKPOINT_FILES, PROGRESS_FILE
from ..ecad_core.search.front import FRONT_INDEX

log = logging.getLogger("ecad")

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "schedules"
FOLDER_NAME = "ecad_schedules"
SEP = " · "
SCHEDULE_TYPE = "ECAD_SCHEDULE"  # the node socket type of a schedule
# the JSON files a search keeps beside its schedules (not schedules themselves); its other files
# (checkpoint, references, evaluations.csv, front.png, *.tmp) are not *.json, so never listed.
# Skipped only inside a search folder: elsewhere a user's schedule may have one of these names.
SEARCH_BOOKKEEPING = (FRONT_INDEX, PROGRESS_FILE, LATENCY_COST_FILE)
SEARCH_MARKERS = (CHECKPOINT_FILE, *LEGACY_CHECKPOINT_FILES)
FRONT_DIR = "front"
# path -> (stat key, schedule or None when unreadable); the lock: the /ecad/presets route lists from a
# worker thread while ComfyUI lists on its event loop
_cache: dict[str, tuple[tuple, Schedule | None]] = {}
_digests: dict[str, tuple[tuple, str]] = {}
_lock = threading.Lock()
_warned: set[str] = set()


def register_user_folder() -> None:
    import folder_paths

    if FOLDER_NAME not in folder_paths.folder_names_and_paths:
        path = os.path.join(folder_paths.models_dir, FOLDER_NAME)
        folder_paths.folder_names_and_paths[FOLDER_NAME] = ([path], {".json"})


def user_dirs() -> list[Path]:
    import folder_paths

    register_user_folder()
    return [Path(p) for p in folder_paths.get_folder_paths(FOLDER_NAME)]


def _warn_once(msg: str, *args) -> None:
    text = msg % args
    if text not in _warned:
        _warned.add(text)
        log.warning(text)


def _is_search_folder(d: Path) -> bool:
    """A folder a search wrote: it holds a checkpoint or a front folder."""
    try:
        return (d / FRONT_DIR).is_dir() or any((d / m).is_file() for m in SEARCH_MARKERS)
    except OSError:
        return False


def _is_bookkeeping(p: Path) -> bool:
    if p.name not in SEARCH_BOOKKEEPING:
        return False
    d = p.parent
    return _is_search_folder(d) or (d.name == FRONT_DIR and _is_search_folder(d.parent))


def _files() -> list[tuple[str, Path]]:
    """(key, path): shipped files by stem, user files as 'user/<relative path without .json>'."""
    out = [(p.stem, p) for p in sorted(SHIPPED_DIR.glob("*.json"))]
    for d in user_dirs():
        try:
            if not d.is_dir():
                continue
            found = sorted(d.rglob("*.json"))
        except OSError as e:  # an unreadable folder costs its own files only
            _warn_once("ECAD: cannot list schedules in %s (%s)", d, e)
            continue
        for p in found:
            if any(part.startswith(".") for part in p.relative_to(d).parts) or _is_bookkeeping(p):
                continue
            rel = p.relative_to(d).with_suffix("").as_posix()
            out.append((f"user/{rel}", p))
    return out


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def _load(path: Path) -> Schedule:
    """load_schedule, with any unexpected exception turned into the ScheduleError naming the file."""
    try:
        return load_schedule(path)
    except ScheduleError:
        raise
    except Exception as e:  # noqa: BLE001 - last resort: a parser hole must cost this file only
        raise file_error(str(path), f"cannot be read ({type(e).__name__}: {e})") from None


def _load_cached(path: Path) -> Schedule | None:
    try:
        key = _stat_key(path.stat())
    except OSError:
        key = None  # a dangling link (or a file just removed): loading says why, once
    with _lock:
        hit = _cache.get(str(path))
        if hit and hit[0] == key:
            return hit[1]
        try:
            s = _load(path)
        except ScheduleError as e:
            # once per file version: the result is cached until the file changes
            log.warning("ECAD: skipping unreadable schedule %s", e)
            s = None
        _cache[str(path)] = (key, s)
    return s


def fingerprint(value: str) -> str:
    """The content hash of the file a dropdown value names, for IS_CHANGED: an edited file then
    re-runs the node. Re-hashed only when the file's mtime/size/inode change."""
    key = key_of(value)
    path = _path_of(key)
    if path is None:
        return f"{key}: missing"
    try:
        sk = _stat_key(path.stat())
    except OSError:
        return f"{key}: missing"
    hit = _digests.get(str(path))
    if hit and hit[0] == sk:
        return hit[1]
    try:
        raw = read_regular_file(path, MAX_FILE_BYTES)
    except (ScheduleError, OSError):
        return f"{key}: unreadable {sk}"  # running the node reports why
    digest = f"{key}: sha256 {hashlib.sha256(raw).hexdigest()}"
    _digests[str(path)] = (sk, digest)
    return digest


def speedup_of(s: Schedule) -> float | None:
    m = s.metrics if isinstance(s.metrics, dict) else {}
    for key in ("ecad_latency_speedup", "expected_speedup"):
        v = _positive(m.get(key))
        if v is not None:
            return v
    frac = _positive(m.get("compute_fraction"))
    return 1.0 / frac if frac is not None else None


def _positive(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) and f > 0 else None


def made_at(s: Schedule) -> str | None:
    """The image size a schedule was made (or measured) at, from its provenance: '256px' or 'WxH'."""
    res = (s.provenance or {}).get("resolution") if isinstance(s.provenance, dict) else None
    if not (isinstance(res, list) and len(res) == 2 and all(_positive(v) for v in res)):
        return None
    h, w = (int(v) for v in res)
    return f"{h}px" if h == w else f"{w}x{h}"


def speedup_basis(s: Schedule) -> str:
    """What the speedup of speedup_of() is: measured by ECAD on a GPU, MACs-expected, or unknown ('')."""
    m = s.metrics if isinstance(s.metrics, dict) else {}
    at = made_at(s)
    size = f" @{at}" if at else ""
    if _positive(m.get("ecad_latency_speedup")) is not None:
        gpu = m.get("ecad_latency_gpu")
        gpu = one_line(gpu.removeprefix("NVIDIA ").strip(), 40) if isinstance(gpu, str) and gpu.strip() else "a GPU"
        return f"measured on {gpu}{size}"
    model = m.get("compute_model")
    if isinstance(model, str) and model:
        kinds = {"macs": "MACs", "latency": "latency here", "uniform": "units"}
        return f"{kinds.get(model.split()[0].lower(), one_line(model, 20))}{size}"
    return f"MACs{size}" if at else ""


def label(key: str, s: Schedule) -> str:
    """The dropdown value of a schedule: '<key> · <model> · <speedup>× <basis>' (the model as its family names
    it; the basis says whether the speedup was measured, on which GPU, or is MACs-expected, and at which size)."""
    sp = speedup_of(s)
    parts = [key, families.model_label(s.model, s.family)]
    if sp:
        basis = speedup_basis(s)
        parts.append(f"{sp:.2f}×" + (f" {basis}" if basis else ""))
    return SEP.join(parts)


def info_text(s: Schedule) -> str:
    """What the Load and Preview nodes say about a schedule."""
    info = s.summary()
    sp = speedup_of(s)
    lines = [
        f"{s.name} ({families.model_label(s.model, s.family)})",
        f"{info['steps']} steps, {s.layout.describe()}",
        f"recomputed: {100 * info['recompute_fraction']:.1f}% of unit-steps",
    ]
    if sp:
        basis = speedup_basis(s)
        lines.append(f"speedup: {sp:.2f}x" + (f" ({basis})" if basis else ""))
    return "\n".join(lines)


def _listed(layout=None) -> list[str]:
    out = []
    for key, path in _files():
        s = _load_cached(path)
        if s is not None and (layout is None or s.layout == layout):
            out.append(label(key, s))
    return out


def options() -> list[str]:
    """Dropdown values: '<key> · <model> · <speedup>×'."""
    return _listed()


def options_fitting(layout) -> list[str]:
    """Dropdown values of the schedules whose layout (family and block counts) is ``layout``."""
    return _listed(layout)


def key_of(value: str) -> str:
    return value.split(SEP)[0].strip()


def known(value: str) -> bool:
    """Whether a dropdown value names a listed schedule, by its key: a saved workflow's value still does after
    the label's speedup text changed."""
    return key_of(value) in {key_of(o) for o in options()}


def _path_of(key: str) -> Path | None:
    for k, path in _files():
        if k == key:
            return path
    return None


def resolve(value: str) -> Schedule:
    """The schedule a dropdown value (or a bare key) names; ScheduleError if it is gone or broken."""
    key = key_of(value)
    path = _path_of(key)
    if path is None:
        raise ScheduleError(
            key,
            "no such ECAD schedule: not among the shipped presets nor in "
            f"models/{FOLDER_NAME} (was it renamed or deleted?)",
        )
    return _load(path)


# -- schedules embedded in a workflow ------------------------------------------------------------
# Apply and Load carry the text of a non-shipped schedule in this widget (web/ecad.js fills it when the
# preset is picked), so a shared workflow runs on a machine that lacks the file.
EMBED_INPUT = "embedded_schedule"


def embed_input_spec() -> tuple:
    return (
        "STRING",
        {
            "default": "",
            "multiline": True,
            "advanced": True,  # shown by the node menu's 'Show Advanced'
            "tooltip": "Filled by the pack when you pick one of your own schedules: the schedule's text, saved "
            "in the workflow so that it runs on a machine without the file. Leave it as it is.",
        },
    )


def validate(value: str, text, what: str):
    """VALIDATE_INPUTS of Apply and Load: True, or the message (a missing file with no embedded copy, or a bad
    embedded copy)."""
    if has_embedded(text):
        try:
            embedded_copy(value, text)
        except ScheduleError as e:
            return str(e)
        return True
    if known(value):
        return True
    return f"{what} {key_of(value)!r} not found (shipped presets or models/{FOLDER_NAME})"


def is_shipped(value: str) -> bool:
    return key_of(value) in {p.stem for p in SHIPPED_DIR.glob("*.json")}


def embedded_copy(value: str, text: str) -> Schedule:
    """The schedule embedded in a workflow for the preset ``value``: the files' parser and size limit; a bad
    copy is a ScheduleError naming it."""
    src = f"the copy of {key_of(value)!r} embedded in the workflow"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        raise file_error(src, f"too large ({size} bytes; the limit is {MAX_FILE_BYTES})")
    try:
        return loads_schedule(text, src)
    except ScheduleError:
        raise
    except Exception as e:  # noqa: BLE001 - last resort, as for files
        raise file_error(src, f"cannot be read ({type(e).__name__}: {e})") from None


def has_embedded(text) -> bool:
    return isinstance(text, str) and bool(text.strip())


def fingerprint_with(value: str, text) -> str:
    """fingerprint() plus the embedded copy's hash: either changing re-runs the node."""
    fp = fingerprint(value)
    if has_embedded(text):
        fp += f"; embedded sha256 {hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()}"
    return fp


def resolve_with(value: str, text) -> Schedule:
    """The schedule a preset value names for a workflow that may embed a copy of it.

    The local file is used when it has the embedded content; otherwise the embedded copy wins (the workflow
    was made with it) and the log says why: the file is missing here, unreadable, or different (never replaced).
    """
    if not has_embedded(text):
        return resolve(value)
    key = key_of(value)
    emb = embedded_copy(value, text)
    path = _path_of(key)
    local = _load_cached(path) if path is not None else None
    if local is not None and local == emb:
        return local
    if path is None:
        why = (
            f"is not on this machine (models/{FOLDER_NAME}): using the copy embedded in the workflow. "
            "To keep it, right-click the node > 'ECAD: save embedded schedule'"
        )
    elif local is None:
        why = f"file {path} cannot be read: using the copy embedded in the workflow"
    else:
        why = (
            f"file {path} differs from the copy embedded in the workflow: the embedded copy is used for this "
            "workflow; the file is left as it is"
        )
    log.warning("ECAD: schedule %r %s", key, why)
    return emb


def embeddable_text(value: str) -> dict:
    """What web/ecad.js embeds for a picked preset: nothing for 'off' and shipped presets (every install has
    them), the schedule's text (project format) for the user's own."""
    key = key_of(value)
    if not key or key == "off" or is_shipped(value):
        return {"key": key, "shipped": key != "off" and bool(key), "text": ""}
    return {"key": key, "shipped": False, "text": resolve(value).dumps()}


def save_embedded(value: str, text: str) -> dict:
    """Saves a workflow's embedded copy as the user schedule its preset names ('user/<path>'); an existing file
    is never replaced. Returns {"saved": bool, "path", "message"}; ScheduleError for a bad name or copy."""
    key = key_of(value)
    if not key.startswith("user/"):
        raise ScheduleError(key, "only your own schedules (user/...) can be saved from a workflow")
    rel = Path(key[len("user/") :] + ".json")
    if rel.is_absolute() or any(part in ("", ".", "..") or part.startswith(".") for part in rel.parts):
        raise ScheduleError(key, "not a plain path inside models/ecad_schedules")
    s = embedded_copy(value, text)
    existing = _path_of(key)
    if existing is not None:
        local = _load_cached(existing)
        same = local is not None and local == s
        msg = "already saved" if same else "a different file with this name exists; it is not replaced"
        return {"saved": False, "path": str(existing), "message": f"{key}: {msg} ({existing})"}
    dirs = user_dirs()
    if not dirs:
        raise ScheduleError(key, f"no models/{FOLDER_NAME} folder is configured")
    path = dirs[0] / rel
    s.save(path)
    log.info("ECAD: saved the schedule embedded in the workflow as %s", path)
    return {"saved": True, "path": str(path), "message": f"{key}: saved to {path}"}
