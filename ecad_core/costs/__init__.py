"""Compute cost: the analytic MACs model (``macs.py``), the search's cost tables built from it (``compute.py``)
and costs measured on a device (``latency.py``, imported on first use: it needs torch)."""

from typing import Any

from .compute import LATENCY_COST_FILE, ComputeCost, cost_for_transformer, macs_cost, uniform_cost
from .macs import (
    ARCHS,
    DEFAULT_BATCH,
    FAMILY_DEFAULT,
    MODES,
    Arch,
    StepCosts,
    arch_for_schedule,
    bits_macs,
    cost_breakdown,
    expected_speedup,
    fraction_of_full,
    get_arch,
    no_cache_macs,
    per_step_macs,
    schedule_macs,
    step_costs,
)

__all__ = [
    "ARCHS",
    "DEFAULT_BATCH",
    "FAMILY_DEFAULT",
    "LATENCY_COST_FILE",
    "MODES",
    "Arch",
    "ComputeCost",
    "StepCosts",
    "arch_for_schedule",
    "bits_macs",
    "cost_breakdown",
    "cost_for_transformer",
    "expected_speedup",
    "fraction_of_full",
    "get_arch",
    "macs_cost",
    "measured_latency_cost",
    "no_cache_macs",
    "per_step_macs",
    "schedule_macs",
    "step_costs",
    "uniform_cost",
]


def __getattr__(name: str) -> Any:
    if name == "measured_latency_cost":
        from .latency import measured_latency_cost

        return measured_latency_cost
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
