"""The compute objective: the fraction of full-compute MACs a schedule spends.

``fraction = (sum_t fixed_t + sum_{t,u} bits[t,u] * unit[t,u]) / (sum_t fixed_t + sum_{t,u} unit[t,u])``

with ``bits`` the effective bits (step 0 always computed), ``unit`` the cost
of recomputing each unit at each step and ``fixed`` what every step pays
whatever the schedule (embedders, modulation, final layer). Costs come from
``ecad_core.costs`` (analytic MACs of the real architecture at the search's
resolution) when the model is known, else every unit costs 1 and the fixed
part is 0 (``uniform``: the fraction is then the recompute fraction).
``measured_latency_cost`` instead times each unit on this device during one
full-compute sampling run, as the cache runs it (seconds, including the input
a re-stated block builds only for a computed unit; the fixed part is everything
else the transformer does), for a search that minimises measured latency.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..layout import Layout
from .errors import SearchSettingsError

# where a search keeps a measured latency cost (reused on resume)
LATENCY_COST_FILE = "latency_cost.json"


@dataclass(frozen=True)
class ComputeCost:
    """Per-step, per-unit recompute costs and a fixed per-step cost."""

    unit: np.ndarray          # float64 [steps, n_units]
    fixed: np.ndarray         # float64 [steps]
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

    def describe(self) -> dict:
        return {"source": self.source, **self.info}

    def save(self, path: str | Path) -> Path:
        """JSON with the full tables (a measured cost must be reused as is on resume)."""
        path = Path(path)
        d = {"format": "comfyui-ecad/compute-cost", "version": 1, "source": self.source, "info": self.info,
             "unit": self.unit.tolist(), "fixed": self.fixed.tolist()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ComputeCost":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            if d.get("format") != "comfyui-ecad/compute-cost":
                raise ValueError("not a comfyui-ecad compute-cost file")
            return cls(np.array(d["unit"], np.float64), np.array(d["fixed"], np.float64), source=d["source"],
                       info=dict(d.get("info") or {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SearchSettingsError(f"{path}: cannot read the saved compute cost ({e}); delete it to measure "
                                      "again") from None


def uniform_cost(layout: Layout, steps: int, unit_cost=None, fixed_per_step: float = 0.0) -> ComputeCost:
    """Every unit costs ``unit_cost`` (scalar, [n_units] or [steps, n_units]; default 1) plus a fixed part."""
    if unit_cost is None:
        unit_cost = 1.0
    u = np.broadcast_to(np.asarray(unit_cost, np.float64), (steps, layout.n_units)).copy()
    src = "uniform" if np.ndim(unit_cost) == 0 and fixed_per_step == 0 else "per-unit costs"
    return ComputeCost(u, np.full(steps, float(fixed_per_step)), source=src)


def macs_cost(layout: Layout, steps: int, arch, height: int, width: int, *, text_tokens: int | None = None,
              mode: str = "ecad") -> ComputeCost:
    """Analytic MACs of ``arch`` (an ``ecad_core.costs.Arch`` or a name) at ``height`` x ``width``."""
    from .. import costs

    c = costs.step_costs(arch, height, width, text_tokens=text_tokens, mode=mode)
    if c.layout != layout:
        raise SearchSettingsError(f"cost model {c.arch.name!r} has {c.layout.describe()} but the model being "
                                  f"searched has {layout.describe()}")
    unit = np.broadcast_to(c.unit.astype(np.float64), (steps, layout.n_units)).copy()
    return ComputeCost(unit, np.full(steps, float(c.fixed)), source="macs",
                       info={"arch": c.arch.name, "mode": mode, "height": c.height, "width": c.width,
                             "text_tokens": c.text_tokens, "full_step_macs": int(c.full_step),
                             "fixed_step_macs": int(c.fixed)})


def cost_for_transformer(transformer, layout: Layout, steps: int, height: int, width: int, *,
                         text_tokens: int | None = None, mode: str = "ecad") -> ComputeCost:
    """MACs from a diffusers transformer's config when ``ecad_core.costs`` knows it, else uniform."""
    try:
        from ..costs import Arch
        arch = Arch.from_diffusers_config(dict(transformer.config), text_tokens=text_tokens)
        return macs_cost(layout, steps, arch, height, width, text_tokens=text_tokens, mode=mode)
    except (ImportError, ValueError, KeyError, TypeError, AttributeError) as e:
        cost = uniform_cost(layout, steps)
        return ComputeCost(cost.unit, cost.fixed, source="uniform",
                           info={"why": f"no analytic cost model for this transformer ({e})"})


def measured_latency_cost(transformer, layout: Layout, steps: int, run_full: Callable[[], object], *,
                          unit_modules=None, warmup: bool = True,
                          run_patched: Callable[[], object] | None = None) -> ComputeCost:
    """Unit times in seconds, timed on this device while ``steps`` steps are sampled with full compute.

    With ``run_patched`` (sampling with this pack's cache attached and every unit computed), each unit is
    timed as the cache runs it: what reusing it saves, including the input a re-stated block builds only
    for a computed unit (PixArt's norm + modulation before ``attn1`` / ``ff``; FLUX's norms, and the
    activation + concatenation before a single block's ``proj_out``). Otherwise ``run_full()`` samples
    the unpatched model and each unit's module (``find_diffusers_units`` order, or ``unit_modules``) is
    timed. Either way each call of ``transformer`` is timed too, the device synchronised around every
    timing; a unit's cost per step is its total time / ``steps``, the fixed cost per step the
    transformer's time outside the units / ``steps``. ``warmup`` samples once untimed first (allocator,
    kernel selection).
    """
    import torch

    if run_patched is None and unit_modules is None:
        from ..adapters import find_diffusers_units
        um = find_diffusers_units(transformer)
        if um.layout != layout:
            raise SearchSettingsError(f"the transformer has {um.layout.describe()}, the search {layout.describe()}")
        unit_modules = um.modules
    if run_patched is None and len(unit_modules) != layout.n_units:
        raise SearchSettingsError(f"{len(unit_modules)} unit modules for {layout.n_units} units")
    try:
        device = next(transformer.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    # ComfyUI may move the weights to the GPU only inside run_full(): synchronise whenever CUDA is there
    sync = torch.cuda.synchronize if (device.type == "cuda" or torch.cuda.is_available()) else (lambda: None)
    unit_s = np.zeros(layout.n_units)
    call_s = [0.0]
    calls = [0]
    starts: dict = {}

    def pre(key):
        def hook(module, args, kwargs=None):
            sync()
            starts[key] = time.perf_counter()
        return hook

    def post(key, into):
        def hook(module, args, *rest):
            sync()
            into(key, time.perf_counter() - starts.pop(key))
        return hook

    def add_unit(i, dt):
        unit_s[i] += dt

    def add_call(_, dt):
        call_s[0] += dt
        calls[0] += 1

    run = run_full if run_patched is None else run_patched
    if warmup:
        with torch.no_grad():
            run()
    handles = []
    timed = np.zeros(layout.n_units, dtype=np.int64)
    try:
        if run_patched is None:
            for i, m in enumerate(unit_modules):
                handles.append(m.register_forward_pre_hook(pre(i)))
                handles.append(m.register_forward_hook(post(i, add_unit)))
        handles.append(transformer.register_forward_pre_hook(pre("call")))
        handles.append(transformer.register_forward_hook(post("call", add_call)))
        with torch.no_grad(), (_engine_units_timed(sync, unit_s, timed) if run_patched is not None
                               else contextlib.nullcontext()):
            run()
    finally:
        for h in handles:
            h.remove()
    if calls[0] == 0:
        raise SearchSettingsError("measuring latency: the full-compute run never called the transformer")
    if run_patched is not None and not timed.all():
        raise SearchSettingsError(
            f"measuring latency: {int((timed == 0).sum())} of {layout.n_units} units never ran through the cache "
            f"(first: unit {int(np.argmin(timed))}); this model's units cannot be timed one by one")
    fixed = max(call_s[0] - float(unit_s.sum()), 0.0) / steps
    unit = np.broadcast_to(unit_s / steps, (steps, layout.n_units)).copy()
    return ComputeCost(unit, np.full(steps, fixed), source="latency",
                       info={"device": str(device), "seconds_per_step": round(call_s[0] / steps, 6),
                             "transformer_calls": calls[0],
                             "units_timed": "modules" if run_patched is None else "as the cache runs them"})


@contextlib.contextmanager
def _engine_units_timed(sync, seconds: np.ndarray, counts: np.ndarray):
    """Within: every unit computation of every ``CacheEngine`` adds its time (device synchronised around it)
    to ``seconds[unit]``. Patches the engine class for the measurement only (the hot path stays untimed)."""
    from ..engine import CacheEngine

    original = CacheEngine._unit_call

    def timed(self, unit, fn, args, kwargs, sig_args, sig_kwargs):
        def run(*a, **k):
            sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync()
            seconds[unit] += time.perf_counter() - t0
            counts[unit] += 1
            return out
        return original(self, unit, run, args, kwargs, sig_args, sig_kwargs)

    CacheEngine._unit_call = timed
    try:
        yield
    finally:
        CacheEngine._unit_call = original
