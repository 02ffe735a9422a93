"""Schedules: one recompute bit per (sampling step, unit), plus metadata.

``bits[step, unit]`` is True where the unit is recomputed at that step and
False where it reuses the output it produced the last time it ran. Step 0 is
always computed, whatever its bits say (ECAD's reference files sometimes store
False there; those bits are kept so files round-trip, but never honoured).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelMismatchError, ScheduleError
from .layout import Layout, layout_from_json

FORMAT_ID = "comfyui-ecad/schedule"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_STEPS = 1000
# The largest real layouts have ~60 blocks x 3-6 units (FLUX.1: 171 units) and <= 1000 steps, so
# at most ~360k unit-steps; the limits leave ~3-6x room and keep memory (bits, preview) bounded.
MAX_UNITS = 2048
MAX_UNIT_STEPS = 1_000_000
# Real files nest at most 7 levels; deeper junk would only overflow the stack of copy/json later.
MAX_DEPTH = 32
MAX_ABS_INT = 2**63
MAX_PROBLEM_CHARS = 300
_LINE_BREAKS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
TOP_KEYS_REQUIRED = ("format", "version", "name", "family", "layout", "steps", "bits")
TOP_KEYS_OPTIONAL = ("model", "provenance", "metrics")


@dataclass
class Schedule:
    layout: Layout
    bits: np.ndarray  # bool [steps, n_units]
    name: str = "unnamed"
    model: str | None = None  # variant hint: pixart-alpha, pixart-sigma, flux-dev, ...
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        check_size(self.layout, None, lambda msg: ScheduleError(self.name, msg))
        self.bits = np.asarray(self.bits, dtype=bool)
        if self.bits.ndim != 2 or self.bits.shape[1] != self.layout.n_units:
            raise ScheduleError(
                self.name, f"bits must have shape (steps, {self.layout.n_units}), got {tuple(self.bits.shape)}"
            )
        if not 1 <= self.bits.shape[0] <= MAX_STEPS:
            raise ScheduleError(self.name, f"number of steps must be in 1..{MAX_STEPS}, got {self.bits.shape[0]}")
        check_size(self.layout, self.bits.shape[0], lambda msg: ScheduleError(self.name, msg))

    # -- basic views -------------------------------------------------------
    @property
    def family(self) -> str:
        return self.layout.family

    @property
    def steps(self) -> int:
        return int(self.bits.shape[0])

    @property
    def units(self) -> list[tuple[str, str]]:
        return self.layout.units()

    def effective_bits(self) -> np.ndarray:
        """The bits the engine honours: step 0 always recomputed."""
        eff = self.bits.copy()
        eff[0, :] = True
        return eff

    def recompute_fraction(self) -> float:
        return float(self.effective_bits().mean())

    def bit(self, step: int, block: str, component: str) -> bool:
        return bool(self.bits[step, self.layout.unit_index()[(block, component)]])

    def summary(self) -> dict:
        eff = self.effective_bits()
        return {
            "name": self.name,
            "family": self.family,
            "model": self.model,
            "steps": self.steps,
            "blocks": self.layout.block_counts(),
            "units_per_step": self.layout.n_units,
            "components": sorted({c for g in self.layout.groups for c in g.components}),
            "recompute_fraction": round(float(eff.mean()), 6),
            "recomputed_unit_steps": int(eff.sum()),
            "total_unit_steps": int(eff.size),
        }

    def check_fits(self, layout: Layout, model_desc: str = "this model") -> None:
        """Raise ModelMismatchError unless this schedule addresses exactly ``layout``'s units."""
        if layout != self.layout:
            raise ModelMismatchError(
                f"schedule {self.name!r} is for {self.layout.describe()}, but {model_desc} is "
                f"{layout.describe()}; pick a schedule made for this model (or search one)"
            )

    def copy(self, **changes) -> Schedule:
        kw: dict[str, Any] = dict(
            layout=self.layout,
            bits=self.bits.copy(),
            name=self.name,
            model=self.model,
            provenance=copy.deepcopy(self.provenance),
            metrics=copy.deepcopy(self.metrics),
        )
        kw.update(changes)
        return Schedule(**kw)

    def __eq__(self, other):
        return (
            isinstance(other, Schedule)
            and self.layout == other.layout
            and np.array_equal(self.bits, other.bits)
            and self.name == other.name
            and self.model == other.model
            and self.provenance == other.provenance
            and self.metrics == other.metrics
        )

    # -- constructors --------------------------------------------------------
    @classmethod
    def full(cls, layout: Layout, steps: int, name: str = "no-cache", **kw) -> Schedule:
        return cls(layout, np.ones((steps, layout.n_units), bool), name=name, **kw)

    @classmethod
    def every_n(cls, layout: Layout, steps: int, n: int, **kw) -> Schedule:
        """FORA-like: every unit recomputed when ``step % n == 0``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        bits = np.zeros((steps, layout.n_units), bool)
        bits[::n] = True
        return cls(layout, bits, name=kw.pop("name", f"recompute-all-every-{n}"), **kw)

    # -- project format ------------------------------------------------------
    def to_json_dict(self) -> dict:
        d: dict[str, Any] = {
            "format": FORMAT_ID,
            "version": FORMAT_VERSION,
            "name": self.name,
            "family": self.family,
            "model": self.model,
            "layout": self.layout.to_json(),
            "steps": self.steps,
            "bits": [_row_to_str(row, self.layout) for row in self.bits],
        }
        if self.provenance:
            d["provenance"] = self.provenance
        if self.metrics:
            d["metrics"] = self.metrics
        return d

    def dumps(self) -> str:
        """The project format: one line per key, one line per step (diff-friendly)."""
        d = self.to_json_dict()
        # what the reader would refuse (Infinity, NaN, ...) is never written
        check_plain_json(d, lambda msg: ScheduleError(self.name, f"cannot be saved: {msg}"))
        lines = []
        for k, v in d.items():
            if k == "bits":
                inner = ",\n".join(f"    {json.dumps(s)}" for s in v)
                lines.append(f'  "bits": [\n{inner}\n  ]')
            else:
                lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False, allow_nan=False)}")
        return "{\n" + ",\n".join(lines) + "\n}\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.dumps(), encoding="utf-8")
        tmp.replace(path)
        return path


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` as one line (control characters and line breaks escaped), cut in the middle to ``limit``
    characters: names and values copied from a file into a message must not make it span lines or pages
    (the end, which usually says what is wrong, is kept)."""
    text = _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)
    if limit is None or len(text) <= limit:
        return text
    head = (limit - 3) * 2 // 3
    return text[:head] + "..." + text[len(text) - (limit - 3 - head) :]


def file_error(source: str, problem: str) -> ScheduleError:
    return ScheduleError(one_line(str(source)), one_line(problem, MAX_PROBLEM_CHARS))


def check_size(layout: Layout, steps: int | None, err) -> None:
    """Refuse schedules with no units or more than real models need (``err(msg)`` builds the error)."""
    n = layout.n_units
    if n == 0:
        raise err(f"has no units: every block count is 0 ({layout.describe()})")
    if n > MAX_UNITS:
        raise err(
            f"{n} units per step is more than the limit of {MAX_UNITS} "
            f"({layout.describe()}; real models have a few hundred)"
        )
    if steps is not None and n * steps > MAX_UNIT_STEPS:
        raise err(f"{steps} steps x {n} units = {n * steps} unit-steps is more than the limit of {MAX_UNIT_STEPS}")


def check_plain_json(obj: Any, err) -> None:
    """Refuse what JSON files should not hold and later code would trip on: nesting deeper than
    MAX_DEPTH, non-finite or huge numbers, non-string keys, strings that are not valid Unicode."""
    stack = [(obj, "", 0)]
    while stack:
        o, where, depth = stack.pop()
        at = f" at {where}" if where else ""
        if depth > MAX_DEPTH:
            raise err(f"nested more than {MAX_DEPTH} levels deep{at}")
        if isinstance(o, dict):
            for k, v in o.items():
                if not isinstance(k, str):
                    raise err(f"key {k!r}{at} is not a string")
                _check_text(k, f"key{at}", err)
                stack.append((v, f"{where}.{k}" if where else k, depth + 1))
        elif isinstance(o, (list, tuple)):  # tuples: from code; json writes them as lists
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(o))
        elif isinstance(o, str):
            _check_text(o, f"text{at}", err)
        elif isinstance(o, bool) or o is None:
            pass
        elif isinstance(o, int):
            if not -MAX_ABS_INT < o < MAX_ABS_INT:
                raise err(f"number{at} is too large (more than {len(str(MAX_ABS_INT))} digits)")
        elif isinstance(o, float):
            if not math.isfinite(o):
                raise err(f"number{at} is not finite ({o}); only finite numbers are allowed")
        else:
            raise err(f"value{at} of type {type(o).__name__} is not plain JSON")


def _check_text(s: str, what: str, err) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise err(f"{what} is not valid Unicode (a lone surrogate escape)") from None


def _row_to_str(row: np.ndarray, layout: Layout) -> str:
    # Blocks separated by spaces so a reader can find block k at word k.
    return " ".join("".join("1" if b else "0" for b in row[sl]) for _, sl in layout.block_slices())


def from_json_dict(d: Any, source: str = "<schedule>") -> Schedule:
    """Parse the project format; every problem raises ScheduleError naming ``source``."""

    def err(msg):
        return file_error(source, msg)

    if not isinstance(d, dict):
        raise err(f"top level must be a JSON object, got {type(d).__name__}")
    check_plain_json(d, err)
    if d.get("format") != FORMAT_ID:
        raise err(f"'format' must be {FORMAT_ID!r}, got {d.get('format')!r}")
    missing = [k for k in TOP_KEYS_REQUIRED if k not in d]
    if missing:
        raise err(f"missing key(s): {', '.join(missing)}")
    unknown = sorted(set(d) - set(TOP_KEYS_REQUIRED) - set(TOP_KEYS_OPTIONAL))
    if unknown:
        raise err(f"unknown key(s): {', '.join(unknown)}")
    if d["version"] != FORMAT_VERSION or isinstance(d["version"], bool):
        raise err(f"unsupported format version {d['version']!r} (this build reads version {FORMAT_VERSION})")
    name = d["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise err("'name' must be a non-empty string of at most 200 characters")
    model = d.get("model")
    if model is not None and not isinstance(model, str):
        raise err(f"'model' must be a string or null, got {model!r}")
    for key in ("provenance", "metrics"):
        if key in d and not isinstance(d[key], dict):
            raise err(f"'{key}' must be an object")
    if not isinstance(d["family"], str):
        raise err(f"'family' must be a string, got {d['family']!r}")
    try:
        layout = layout_from_json(d["family"], d["layout"])
    except ValueError as e:
        raise err(str(e)) from None
    steps = d["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise err(f"'steps' must be an integer in 1..{MAX_STEPS}, got {steps!r}")
    check_size(layout, steps, err)
    rows = d["bits"]
    if not isinstance(rows, list):
        raise err("'bits' must be a list with one bit string per step")
    if len(rows) != steps:
        raise err(f"'steps' is {steps} but 'bits' has {len(rows)} step row(s)")
    bits = np.zeros((steps, layout.n_units), bool)
    per_block = [sl.stop - sl.start for _, sl in layout.block_slices()]
    for i, row in enumerate(rows):
        if not isinstance(row, str):
            raise err(f"bits of step {i}: expected a string of 0/1, got {type(row).__name__}")
        words = row.split()
        flat = "".join(words)
        bad = sorted(set(flat) - {"0", "1"})
        if bad:
            raise err(f"bits of step {i}: only '0' and '1' are allowed, found {''.join(bad)!r}")
        if len(flat) != layout.n_units:
            raise err(f"bits of step {i}: expected {layout.n_units} bits ({layout.describe()}), got {len(flat)}")
        if len(words) > 1 and [len(w) for w in words] != per_block:
            raise err(
                f"bits of step {i}: space-separated groups must be one per block "
                f"({len(per_block)} groups of {per_block[0] if per_block else 0})"
            )
        bits[i] = np.frombuffer(flat.encode(), np.uint8) == ord("1")
    return Schedule(
        layout, bits, name=name, model=model, provenance=d.get("provenance", {}), metrics=d.get("metrics", {})
    )
