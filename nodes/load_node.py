"""Load ECAD Schedule: a schedule file (shipped preset or models/ecad_schedules) and what it is."""

from __future__ import annotations

from . import library
from .library import EMBED_INPUT, SCHEDULE_TYPE


class LoadECADSchedule:
    DESCRIPTION = "Loads an ECAD schedule file (shipped preset or models/ecad_schedules)."
    CATEGORY = "ECAD"
    RETURN_TYPES = (SCHEDULE_TYPE, "STRING")
    RETURN_NAMES = ("schedule", "info")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        opts = library.options()
        return {
            "required": {"schedule_file": (opts, {"default": opts[0] if opts else ""})},
            "optional": {EMBED_INPUT: library.embed_input_spec()},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, schedule_file, embedded_schedule=""):
        return library.validate(schedule_file, embedded_schedule, "ECAD schedule")

    @classmethod
    def IS_CHANGED(cls, schedule_file, embedded_schedule=""):
        # content hashes: an edited file (or embedded copy) is re-read
        return library.fingerprint_with(schedule_file, embedded_schedule)

    def load(self, schedule_file, embedded_schedule=""):
        s = library.resolve_with(schedule_file, embedded_schedule)
        return (s, library.info_text(s))
