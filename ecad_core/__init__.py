"""ECAD backend: schedules, cache engine, model adapters, cost model, search. Never imports ComfyUI."""
from .errors import EcadError, ModelMismatchError, ScheduleError, SelfCheckError
from .layout import Layout, make_layout
from .schedule import Schedule, load_schedule, loads_schedule, remap_steps

__version__ = "0.1.0"
from .diffusers_api import EcadHandle, apply, cached
from .engine import CacheEngine, RunStats
