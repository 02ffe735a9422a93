"""Load ECAD Schedule: a schedule file (shipped preset or models/ecad_schedules) and what it is."""

from __future__ import annotations

from . import library
from .library import SCHEDULE_TYPE


class LoadECADSchedule:
    DESCRIPTION = "Loads an ECAD schedule file (shipped preset or models/ecad_schedules)."
    CATEGORY = "ECAD"
    RETURN_TYPES = (SCHEDULE_TYPE, "STRING")
    RETURN_NAMES = ("schedule", "info")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        opts = library.options()
        return {"required": {"schedule_file": (opts, {"default": opts[0] if opts else ""})}}

    @classmethod
    def VALIDATE_INPUTS(cls, schedule_file):
        if library.known(schedule_file):
            return True
        return f"ECAD schedule {library.key_of(schedule_file)!r} not found"

    @classmethod
    def IS_CHANGED(cls, schedule_file):
        return library.fingerprint(schedule_file)  # content hash: an edited file is re-read

    def load(self, schedule_file):
        s = library.resolve(schedule_file)
        return (s, library.info_text(s))
