"""Schedules: layouts (which units), the Schedule object and its two file formats, remapping, model files.

No torch here (numpy only): ``python -m ecad_core info`` / ``convert`` run on this package alone.
"""

from .ecad_format import from_ecad_dict, is_ecad_dict, to_ecad_dict
from .files import load_schedule, loads_schedule, read_json_file, read_regular_file
from .layout import FAMILIES, BlockGroup, Layout, layout_from_json, make_layout
from .remap import remap_steps
from .schedule import (
    FORMAT_ID,
    FORMAT_VERSION,
    MAX_ABS_INT,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_PROBLEM_CHARS,
    MAX_STEPS,
    MAX_UNIT_STEPS,
    MAX_UNITS,
    Schedule,
    check_plain_json,
    check_size,
    file_error,
    from_json_dict,
    one_line,
)

__all__ = [
    "FAMILIES",
    "FORMAT_ID",
    "FORMAT_VERSION",
    "MAX_ABS_INT",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_PROBLEM_CHARS",
    "MAX_STEPS",
    "MAX_UNITS",
    "MAX_UNIT_STEPS",
    "BlockGroup",
    "Layout",
    "Schedule",
    "check_plain_json",
    "check_size",
    "file_error",
    "from_ecad_dict",
    "from_json_dict",
    "is_ecad_dict",
    "layout_from_json",
    "load_schedule",
    "loads_schedule",
    "make_layout",
    "one_line",
    "read_json_file",
    "read_regular_file",
    "remap_steps",
    "to_ecad_dict",
]
