"""Reading schedule files: size, encoding and JSON checks, and the dispatch between the two formats.

``load_schedule`` / ``loads_schedule`` read the project format (``schedule.py``) or ECAD's reference
format (``ecad_format.py``); living here, neither format module imports the other's reader.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import ScheduleError
from .ecad_format import from_ecad_dict, is_ecad_dict
from .schedule import MAX_FILE_BYTES, Schedule, file_error, from_json_dict, one_line


def read_json_file(path: str | Path) -> Any:
    """Read a JSON file with size and encoding checks; errors name the file."""
    path = Path(path)
    src = one_line(str(path))
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ScheduleError(src, "file not found") from None
    except OSError as e:
        raise ScheduleError(src, f"cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ScheduleError(src, "is a directory, not a schedule file")
    try:
        raw = read_regular_file(path, MAX_FILE_BYTES)
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ScheduleError(src, f"not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ScheduleError(src, f"cannot read: {e.strerror or e}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ScheduleError(src, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise ScheduleError(src, f"not valid JSON: {e}") from None
    except RecursionError:
        raise ScheduleError(src, "not valid JSON: nested too deeply") from None


def read_regular_file(path: Path, limit: int) -> bytes:
    """The file's bytes; a device, FIFO or socket (/dev/zero reads forever) is refused before reading.

    Opened non-blocking (a FIFO's open would wait for a writer) and checked on the open descriptor,
    so a file swapped after a check cannot slip through; reads at most ``limit + 1`` bytes."""
    src = one_line(str(path))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ScheduleError(src, "is not a regular file (a device, FIFO or socket cannot be a schedule)")
        if st.st_size > limit:
            raise ScheduleError(src, f"file too large ({st.st_size} bytes; the limit is {limit})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise ScheduleError(src, f"file too large (more than {limit} bytes)")
    return raw


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed in a schedule file")


def load_schedule(path: str | Path) -> Schedule:
    """Load a schedule in the project format or ECAD's reference format."""
    d = read_json_file(path)
    if is_ecad_dict(d):
        return from_ecad_dict(d, source=str(path))
    return from_json_dict(d, source=str(path))


def loads_schedule(text: str, source: str = "<string>") -> Schedule:
    try:
        d = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise file_error(source, f"not valid JSON: {e}") from None
    return from_ecad_dict(d, source) if is_ecad_dict(d) else from_json_dict(d, source)
