"""Import and export of the ECAD reference repository's schedule JSON.

The reference format nests ``schedule[step][block][component] = bool`` with
zero-padded step keys ("000"), PixArt blocks "0".."27" and FLUX double blocks
"0".."18" plus single blocks "single_0".."single_37". Everything that is not
a bit (name, attributes, config, metrics, a declared step count that differs
from the stored steps, TGATE's per-block ``custom_compute_attn``) is kept in
the schedule's provenance so that export gives back the same file content.
The format covers the families whose record says so (``Family.ecad_format``);
a file's family is the first of them whose components hold every one it uses.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .. import families
from .layout import make_layout
from .schedule import MAX_STEPS, Schedule, check_plain_json, check_size, file_error

# Per-block keys that are not bits; kept verbatim (TGATE re-implementation in the reference repo).
EXTRA_BLOCK_KEYS = ("custom_compute_attn",)
# ASCII digits only ("²".isdigit() is True but int() refuses it); a few digits are plenty for 1000 steps
STEP_KEY = re.compile(r"[0-9]{1,9}")


def covered_families() -> list[families.Family]:
    """The families ECAD's reference format covers (``Family.ecad_format``), in their order."""
    return [f for f in families.registered() if f.ecad_format]


def known_components() -> set[str]:
    return {c for f in covered_families() for c in f.components()}


def is_ecad_dict(d: Any) -> bool:
    return isinstance(d, dict) and "cache_schedule" in d


def _int_field(cs: dict, key: str, err, required=True) -> int | None:
    if key not in cs:
        if required:
            raise err(f"cache_schedule.{key} is missing")
        return None
    v = cs[key]
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 4096:
        raise err(f"cache_schedule.{key} must be a non-negative integer, got {v!r}")
    return v


def from_ecad_dict(d: Any, source: str = "<ecad schedule>") -> Schedule:
    def err(msg):
        return file_error(source, msg)

    if not is_ecad_dict(d):
        raise err("not an ECAD schedule (no 'cache_schedule' object)")
    check_plain_json(d, err)
    unknown = sorted(set(d) - {"cache_schedule", "config", "metrics"})
    if unknown:
        raise err(f"unknown top-level key(s): {', '.join(unknown)}")
    cs = d["cache_schedule"]
    if not isinstance(cs, dict):
        raise err("'cache_schedule' must be an object")
    for key in ("config", "metrics"):
        if key in d and not isinstance(d[key], dict):
            raise err(f"'{key}' must be an object")
    sched = cs.get("schedule")
    if not isinstance(sched, dict) or not sched:
        raise err("cache_schedule.schedule must be a non-empty object of steps")
    n_blocks = int(_int_field(cs, "num_blocks", err) or 0)  # required: never None here
    n_single = _int_field(cs, "num_single_blocks", err, required=False)
    declared_steps = _int_field(cs, "num_inference_steps", err, required=False)

    # Steps: "000".."N-1", contiguous.
    step_ids = []
    for k in sched:
        if not (isinstance(k, str) and STEP_KEY.fullmatch(k)):
            raise err(f"step key {k!r} is not a step number like '000'")
        step_ids.append(int(k))
    n_steps = len(step_ids)
    if n_steps > MAX_STEPS:
        raise err(f"{n_steps} steps is more than the limit of {MAX_STEPS}")
    if sorted(step_ids) != list(range(n_steps)):
        # only numbers below the step count can be missing (a range up to max(step_ids) could be huge)
        missing = sorted(set(range(n_steps)) - set(step_ids))
        dup = len(set(step_ids)) != len(step_ids)
        what = (
            "duplicate step numbers (e.g. '0' and '000')"
            if dup
            else (f"missing step(s) {', '.join(f'{m:03d}' for m in missing[:5])}")
        )
        raise err(f"cache_schedule.schedule: {what}")
    key_of = {int(k): k for k in sched}

    # Family from the components used.
    comps_seen = set()
    for k in sched:
        st = sched[k]
        if not isinstance(st, dict):
            raise err(f"step {k}: must be an object of blocks, got {type(st).__name__}")
        for b, v in st.items():
            if not isinstance(v, dict):
                raise err(f"step {k}, block {b}: must be an object of components, got {type(v).__name__}")
            comps_seen |= set(v) - set(EXTRA_BLOCK_KEYS)
    known = known_components()
    unknown_c = sorted(map(str, comps_seen - known))
    if unknown_c:
        raise err(f"unknown component(s) {', '.join(unknown_c)}; known: {', '.join(sorted(known))}")
    covering = [f for f in covered_families() if comps_seen <= f.components()]
    if not covering:
        mixed = [f.label for f in covered_families() if comps_seen & f.components()]
        raise err(f"mixes {' and '.join(mixed)} components")
    fam = covering[0]
    family = fam.name
    if len(fam.groups) == 1:
        if n_single:
            raise err(f"num_single_blocks is set but the components are {fam.label}'s")
        layout = make_layout(family, n_blocks)
    else:
        layout = make_layout(family, n_blocks, n_single or 0)

    check_size(layout, n_steps, err)

    expected_blocks = {}
    for g in layout.groups:
        for b in g.block_names():
            expected_blocks[b] = g.components
    idx = layout.unit_index()
    bits = np.zeros((n_steps, layout.n_units), bool)
    extras: dict[str, dict] = {}
    for s in range(n_steps):
        k = key_of[s]
        st = sched[k]
        extra_b = sorted(set(st) - set(expected_blocks), key=str)
        if extra_b:
            raise err(
                f"step {k}: unknown block {extra_b[0]!r} (this {family} schedule has "
                f"{layout.describe()}; blocks are named {_block_name_hint(layout)})"
            )
        missing_b = [b for b in expected_blocks if b not in st]
        if missing_b:
            raise err(
                f"step {k}: missing block {missing_b[0]!r} (num_blocks={n_blocks}"
                f"{'' if n_single is None else f', num_single_blocks={n_single}'})"
            )
        for b, comps in expected_blocks.items():
            v = st[b]
            wrong = sorted(set(v) - set(comps) - set(EXTRA_BLOCK_KEYS))
            if wrong:
                raise err(
                    f"step {k}, block {b}: component {wrong[0]!r} does not belong to this block "
                    f"(expected {', '.join(comps)})"
                )
            for c in comps:
                if c not in v:
                    raise err(f"step {k}, block {b}: missing component {c!r}")
                x = v[c]
                if not isinstance(x, bool):
                    raise err(f"step {k}, block {b}, component {c}: expected true or false, got {x!r}")
                bits[s, idx[(b, c)]] = x
            for e in EXTRA_BLOCK_KEYS:
                if e in v:
                    if s == 0:
                        extras.setdefault(e, {})[b] = v[e]
                    elif extras.get(e, {}).get(b) != v[e]:
                        raise err(f"step {k}, block {b}: {e} differs from step 000 (unsupported)")
                elif e in extras and b in extras[e]:
                    raise err(f"step {k}, block {b}: {e} is missing but step 000 has it")

    ecad_meta = {"name": cs.get("name"), "attributes": cs.get("attributes", {})}
    if declared_steps is not None and declared_steps != n_steps:
        ecad_meta["num_inference_steps"] = declared_steps
    elif declared_steps is None:
        ecad_meta["num_inference_steps"] = None
    if "config" in d:
        ecad_meta["config"] = d["config"]
    if extras:
        ecad_meta["block_extras"] = extras
    extra_cs = sorted(
        set(cs) - {"num_blocks", "num_single_blocks", "num_inference_steps", "name", "attributes", "schedule"}
    )
    if extra_cs:
        ecad_meta["cache_schedule_extra"] = {k: cs[k] for k in extra_cs}
    name = cs.get("name")
    return Schedule(
        layout,
        bits,
        name=name if isinstance(name, str) and name else "ecad-schedule",
        model=fam.variant_of_ecad_config(d.get("config", {})),  # checked to be an object above
        provenance={"source": "ecad-reference-format", "ecad": ecad_meta},
        metrics=d.get("metrics", {}),
    )


def _block_name_hint(layout) -> str:
    return " and ".join(f"{g.prefix}0..{g.prefix}{g.count - 1}" for g in layout.groups if g.count)


def to_ecad_dict(schedule: Schedule) -> dict:
    """Export to ECAD's reference format (bits as stored; step 0 included verbatim)."""
    fam = families.get(schedule.family)
    if not fam.ecad_format:
        covered = " and ".join(f.label for f in covered_families())
        raise ValueError(f"ECAD's format only covers {covered} schedules, not {schedule.family!r}")
    ecad = schedule.provenance.get("ecad", {}) if isinstance(schedule.provenance, dict) else {}
    groups = schedule.layout.groups
    cs: dict[str, Any] = {"num_blocks": groups[0].count}
    if len(fam.groups) > 1:
        cs["num_single_blocks"] = groups[1].count if len(groups) > 1 else 0
    declared = ecad.get("num_inference_steps", schedule.steps) if "num_inference_steps" in ecad else schedule.steps
    if declared is not None:
        cs["num_inference_steps"] = declared
    cs["name"] = ecad.get("name") or schedule.name
    cs["attributes"] = ecad.get("attributes", {})
    cs.update(ecad.get("cache_schedule_extra", {}))
    extras = ecad.get("block_extras", {})
    slices = schedule.layout.block_slices()
    comps = {b: g.components for g in groups for b in g.block_names()}
    steps = {}
    for s in range(schedule.steps):
        row = schedule.bits[s]
        st = {}
        for b, sl in slices:
            blk = {c: bool(x) for c, x in zip(comps[b], row[sl])}
            for e, per_block in extras.items():
                if b in per_block:
                    blk[e] = per_block[b]
            st[b] = blk
        steps[f"{s:03d}"] = st
    cs["schedule"] = steps
    out: dict[str, Any] = {"cache_schedule": cs}
    if "config" in ecad:
        out["config"] = ecad["config"]
    out["metrics"] = schedule.metrics
    return out
