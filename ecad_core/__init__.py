"""ECAD backend: schedules, cache engine, model adapters, cost model, search. Never imports ComfyUI.

Exports are imported on first use (PEP 562): ``import ecad_core`` and the schedule commands
(``python -m ecad_core info`` / ``convert``) import no torch.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .errors import EcadError, ModelMismatchError, ScheduleError, SelfCheckError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .diffusers.api import EcadHandle, apply, cached
    from .engine import CacheEngine, RunStats
    from .schedule import Layout, Schedule, load_schedule, loads_schedule, make_layout, remap_steps

_EXPORTS = {
    **dict.fromkeys(
        ("Layout", "make_layout", "Schedule", "load_schedule", "loads_schedule", "remap_steps"), ".schedule"
    ),
    **dict.fromkeys(("EcadHandle", "apply", "cached"), ".diffusers.api"),
    **dict.fromkeys(("CacheEngine", "RunStats"), ".engine"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "CacheEngine",
    "EcadError",
    "EcadHandle",
    "Layout",
    "ModelMismatchError",
    "RunStats",
    "Schedule",
    "ScheduleError",
    "SelfCheckError",
    "__version__",
    "apply",
    "cached",
    "load_schedule",
    "loads_schedule",
    "make_layout",
    "remap_steps",
]
