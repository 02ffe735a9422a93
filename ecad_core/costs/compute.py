"""The search's compute objective: the fraction of full-compute cost a schedule spends.

``fraction = (sum_t fixed_t + sum_{t,u} bits[t,u] * unit[t,u]) / (sum_t fixed_t + sum_{t,u} unit[t,u])``

with ``bits`` the effective bits (step 0 always computed), ``unit`` the cost
of recomputing each unit at each step and ``fixed`` what every step pays
whatever the schedule (embedders, modulation, final layer). Costs come from
``ecad_core.costs`` (analytic MACs of the real architecture at the search's
resolution) when the model is known, else every unit costs 1 and the fixed
part is 0 (``uniform``: the fraction is then the recompute fraction).
``latency.measured_latency_cost`` instead measures the costs on this device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SearchSettingsError
from ..schedule import Layout

# where a search keeps a measured latency cost (reused on resume)
LATENCY_COST_FILE = "latency_cost.json"


@dataclass(frozen=True)
class ComputeCost:
    """Per-step, per-unit recompute costs and a fixed per-step cost."""

    unit: np.ndarray  # float64 [steps, n_units]
    fixed: np.ndarray  # float64 [steps]
    source: str = "uniform"
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        unit = np.asarray(self.unit, np.float64)
        fixed = np.asarray(self.fixed, np.float64)
        if unit.ndim != 2:
            raise ValueError(f"unit costs must be [steps, n_units], got shape {unit.shape}")
        fixed = np.broadcast_to(fixed, (unit.shape[0],)).copy()
        if (unit < 0).any() or (fixed < 0).any() or not (np.isfinite(unit).all() and np.isfinite(fixed).all()):
            raise ValueError("costs must be finite and non-negative")
        if unit.sum() + fixed.sum() <= 0:
            raise ValueError("the full-compute cost is zero")
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "fixed", fixed)

    @property
    def steps(self) -> int:
        return int(self.unit.shape[0])

    @property
    def full(self) -> float:
        return float(self.fixed.sum() + self.unit.sum())

    def fraction(self, effective_bits: np.ndarray) -> float:
        """Compute fraction of effective bits [steps, n_units] (step 0 is forced on here too)."""
        b = np.asarray(effective_bits, bool)
        if b.shape != self.unit.shape:
            raise ValueError(f"bits of shape {b.shape} do not match the cost table {self.unit.shape}")
        b = b.copy()
        b[0] = True
        return float((self.fixed.sum() + (b * self.unit).sum()) / self.full)

    def rows(self, rows: list[int]) -> ComputeCost:
        """The cost of only these steps (a stage of a split run: the other steps are another model's), as a
        table of ``len(rows)`` steps; its first row is the stage's first step, always computed."""
        if not rows or min(rows) < 0 or max(rows) >= self.steps:
            raise ValueError(f"rows {rows!r} are not steps of this {self.steps}-step cost table")
        info = {**self.info, "rows": [int(rows[0]), int(rows[-1]) + 1, self.steps]}
        return ComputeCost(self.unit[rows], self.fixed[rows], source=self.source, info=info)

    def describe(self) -> dict:
        return {"source": self.source, **self.info}

    def save(self, path: str | Path) -> Path:
        """JSON with the full tables (a measured cost must be reused as is on resume)."""
        path = Path(path)
        d = {
            "format": "comfyui-ecad/compute-cost",
            "version": 1,
            "source": self.source,
            "info": self.info,
            "unit": self.unit.tolist(),
            "fixed": self.fixed.tolist(),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ComputeCost:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            if d.get("format") != "comfyui-ecad/compute-cost":
                raise ValueError("not a comfyui-ecad compute-cost file")
            return cls(
                np.array(d["unit"], np.float64),
                np.array(d["fixed"], np.float64),
                source=d["source"],
                info=dict(d.get("info") or {}),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SearchSettingsError(
                f"{path}: cannot read the saved compute cost ({e}); delete it to measure again"
            ) from None


def uniform_cost(layout: Layout, steps: int, unit_cost=None, fixed_per_step: float = 0.0) -> ComputeCost:
    """Every unit costs ``unit_cost`` (scalar, [n_units] or [steps, n_units]; default 1) plus a fixed part."""
    if unit_cost is None:
        unit_cost = 1.0
    u = np.broadcast_to(np.asarray(unit_cost, np.float64), (steps, layout.n_units)).copy()
    src = "uniform" if np.ndim(unit_cost) == 0 and fixed_per_step == 0 else "per-unit costs"
    return ComputeCost(u, np.full(steps, float(fixed_per_step)), source=src)


def macs_cost(
    layout: Layout, steps: int, arch, height: int, width: int, *, text_tokens: int | None = None, mode: str = "ecad"
) -> ComputeCost:
    """Analytic MACs of ``arch`` (an ``ecad_core.costs.Arch`` or a name) at ``height`` x ``width``."""
    from .macs import step_costs

    c = step_costs(arch, height, width, text_tokens=text_tokens, mode=mode)
    if c.layout != layout:
        raise SearchSettingsError(
            f"cost model {c.arch.name!r} has {c.layout.describe()} but the model being searched has {layout.describe()}"
        )
    unit = np.broadcast_to(c.unit.astype(np.float64), (steps, layout.n_units)).copy()
    return ComputeCost(
        unit,
        np.full(steps, float(c.fixed)),
        source="macs",
        info={
            "arch": c.arch.name,
            "mode": mode,
            "height": c.height,
            "width": c.width,
            "text_tokens": c.text_tokens,
            "full_step_macs": int(c.full_step),
            "fixed_step_macs": int(c.fixed),
        },
    )


def cost_for_transformer(
    transformer,
    layout: Layout,
    steps: int,
    height: int,
    width: int,
    *,
    text_tokens: int | None = None,
    mode: str = "ecad",
) -> ComputeCost:
    """MACs from a diffusers transformer's config when ``ecad_core.costs`` knows it, else uniform."""
    try:
        from .macs import Arch

        arch = Arch.from_diffusers_config(dict(transformer.config), text_tokens=text_tokens)
        return macs_cost(layout, steps, arch, height, width, text_tokens=text_tokens, mode=mode)
    except (ImportError, ValueError, KeyError, TypeError, AttributeError) as e:
        cost = uniform_cost(layout, steps)
        return ComputeCost(
            cost.unit, cost.fixed, source="uniform", info={"why": f"no analytic cost model for this transformer ({e})"}
        )
