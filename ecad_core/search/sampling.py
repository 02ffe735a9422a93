"""Sampling: the initial population (pymoo's ``sampling``): heuristic schedules, warm starts, mutated copies.

Heuristics (all for any layout: pixart, flux, dit_blocks), in priority order:

1. ``no-cache``: everything recomputed at every step (the quality anchor).
2. ``recompute-all-every-n`` (FORA-like), n = 2..7 (n < steps).
3. One unit type alone cached, the others always computed; the type is
   recomputed every n steps (n = 2, 3, 4). Unit types are (block group,
   component) pairs: PixArt attn1/attn2/ff; FLUX full_attn/full_ff/
   full_ff_context and single_attn/single_proj_mlp/single_proj_out;
   dit_blocks the main and the single block group.
4. TGATE-like: the cross-attention-like component is computed up to gate step
   k and reused for every later step; before the gate, self-attention is
   recomputed every ``sp`` steps after a 2-step warm-up, and fully after it
   (as ECAD's ``tgate_without_ca_avg`` seeds). PixArt: attn2 (cross-attention)
   with attn1; FLUX: full_ff_context (the text-stream feed-forward) with
   full_attn. dit_blocks has no such component and gets none.
5. Attention types together every n (ECAD's ``recompute_ca_sa_every_n``).
   Families 4 and 5 take their components from the model family's record
   (``tgate_components``, ``attention_components``: ``ecad_core/families``).
6. One type cached in an evenly spaced share of its blocks at the steps that
   are not multiples of n (ECAD's ``evenly_cache_*`` seeds).

Families 3-6 are interleaved round-robin so a small population still gets
some of each. Warm-start schedules (files, a folder, an earlier front) come
before all heuristics. The rest of the population is filled with mutated
copies of the seeds (each child flips a share of bits of one seed, drawn from
``(1%, 3%, 10%)`` of the genome, at least one bit), deterministic for a seed.
Duplicate genomes are never kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .. import families
from ..errors import ModelMismatchError, SearchSettingsError
from ..schedule import Layout, Schedule, load_schedule, remap_steps
from .problem import GenomeSpace, genome_key

log = logging.getLogger("ecad.search")

SEED_MUTATION_SHARES = (0.01, 0.03, 0.10)
WARM_START_STEP_POLICIES = ("refuse", "remap")


def unit_types(layout: Layout) -> list[tuple[int, str]]:
    """(group index, component) for every non-empty block group."""
    return [(gi, c) for gi, g in enumerate(layout.groups) if g.count for c in g.components]


def type_mask(layout: Layout, types: Iterable[tuple[int, str]]) -> np.ndarray:
    """bool [n_units]: the units whose (group, component) is in ``types``."""
    types = set(types)
    out: list[bool] = []
    for gi, g in enumerate(layout.groups):
        for _ in range(g.count):
            out.extend((gi, c) in types for c in g.components)
    return np.array(out, dtype=bool)


def _type_label(layout: Layout, t: tuple[int, str]) -> str:
    g = layout.groups[t[0]]
    return f"{g.prefix}{t[1]}" if g.prefix and not t[1].startswith(g.prefix) else t[1]


def _sched(space: GenomeSpace, bits: np.ndarray, name: str, kind: str, **params) -> Schedule:
    bits = bits.copy()
    bits[0] = True
    return Schedule(space.layout, bits, name=name, provenance={"search_seed": {"kind": kind, **params}})


# -- heuristic families -----------------------------------------------------
def no_cache(space: GenomeSpace) -> Schedule:
    return _sched(space, np.ones((space.steps, space.n_units), bool), "no-cache", "no-cache")


def recompute_all_every_n(space: GenomeSpace, n: int) -> Schedule:
    bits = np.zeros((space.steps, space.n_units), bool)
    bits[::n] = True
    return _sched(space, bits, f"recompute-all-every-{n}", "recompute-all-every-n", n=n)


def types_every_n(space: GenomeSpace, types: Sequence[tuple[int, str]], n: int, name: str | None = None) -> Schedule:
    """The units of ``types`` recomputed at steps t % n == 0 only; all other units always."""
    m = type_mask(space.layout, types)
    bits = np.ones((space.steps, space.n_units), bool)
    t = np.arange(space.steps)
    bits[:, m] = (t % n == 0)[:, None]
    labels = [_type_label(space.layout, x) for x in types]
    return _sched(space, bits, name or f"cache-{'+'.join(labels)}-every-{n}", "types-every-n", types=labels, n=n)


def tgate_like(space: GenomeSpace, gate_step: int, sp_interval: int = 1, warmup: int = 2) -> Schedule | None:
    """TGATE-like seed, or None for a family without a cross-attention-like component."""
    fam = families.find(space.layout.family)
    comps = fam.tgate_components if fam is not None else None  # (cross-attention-like, self-attention-like)
    if comps is None:
        return None
    cross, selfc = comps
    types = unit_types(space.layout)
    cm = type_mask(space.layout, [t for t in types if t[1] == cross])
    sm = type_mask(space.layout, [t for t in types if t[1] == selfc])
    bits = np.ones((space.steps, space.n_units), bool)
    t = np.arange(space.steps)
    bits[:, cm] = (t < gate_step)[:, None]
    if sp_interval > 1:
        sa = (t < warmup) | (t >= gate_step) | (t % sp_interval == 0)
        bits[:, sm] = sa[:, None]
    return _sched(
        space,
        bits,
        f"tgate-like-{cross}-gate-{gate_step}-sp-{sp_interval}",
        "tgate-like",
        component=cross,
        gate_step=gate_step,
        sp_interval=sp_interval,
        warmup=warmup,
    )


def evenly_cached(space: GenomeSpace, t: tuple[int, str], block_share: float, every: int) -> Schedule:
    """Type ``t`` cached in an evenly spaced ``block_share`` of its blocks at steps t % every != 0."""
    layout = space.layout
    g = layout.groups[t[0]]
    k = max(1, min(g.count, round(block_share * g.count)))
    chosen = set(np.unique(np.round(np.linspace(0, g.count - 1, k)).astype(int)).tolist())
    mask = np.zeros(space.n_units, bool)
    start = sum(gg.count * len(gg.components) for gg in layout.groups[: t[0]])
    ci = g.components.index(t[1])
    for b in chosen:
        mask[start + b * len(g.components) + ci] = True
    bits = np.ones((space.steps, space.n_units), bool)
    steps_cached = np.arange(space.steps) % every != 0
    bits[np.ix_(steps_cached, mask)] = False
    label = _type_label(layout, t)
    return _sched(
        space,
        bits,
        f"evenly-cache-{label}-{len(chosen)}-blocks-every-{every}",
        "evenly-cached",
        type=label,
        blocks=len(chosen),
        every=every,
    )


def heuristic_seeds(space: GenomeSpace) -> list[Schedule]:
    """All heuristic seeds for the space, in priority order, duplicates removed."""
    S = space.steps
    layout = space.layout
    head = [no_cache(space)] + [recompute_all_every_n(space, n) for n in range(2, 8) if n < S]
    types = unit_types(layout)
    fam3 = [types_every_n(space, [t], n) for n in (2, 3, 4) if n < S for t in types]
    fam4 = []
    for frac in (0.5, 0.7, 0.6, 0.4):
        gate = round(frac * S)
        if not 1 <= gate < S:
            continue
        for sp in (1, 3):
            s = tgate_like(space, gate, sp)
            if s is not None:
                fam4.append(s)
    fam = families.find(layout.family)
    att = [t for t in types if t[1] in (fam.attention_components if fam is not None else ())]
    fam5 = (
        [types_every_n(space, att, n, f"cache-attention-every-{n}") for n in (2, 3, 5) if n < S]
        if len(att) >= 2
        else []
    )
    fam6 = [
        evenly_cached(space, t, share, every) for every in (2, 4) if every < S for share in (0.5, 1.0) for t in types
    ]
    out = list(head)
    fams = [fam3, fam4, fam5, fam6]
    i = 0
    while any(i < len(f) for f in fams):
        for f in fams:
            if i < len(f):
                out.append(f[i])
        i += 1
    return _unique(space, out)


def _unique(space: GenomeSpace, schedules: Iterable[Schedule]) -> list[Schedule]:
    seen, out = set(), []
    for s in schedules:
        k = genome_key(space.encode(s))
        if k not in seen:
            seen.add(k)
            out.append(s)
    return out


# -- warm start -----------------------------------------------------------------
def load_warm_start(items: Iterable, space: GenomeSpace, steps_policy: str = "refuse") -> list[Schedule]:
    """Schedules from files, folders (a front folder or any folder of schedule files) or Schedules.

    Each must fit the search's layout (else ModelMismatchError). A schedule with
    another step count is refused (``steps_policy="refuse"``, the default: a
    clear error that names the file) or remapped with ``ecad_core.remap_steps``
    (``"remap"``: recompute events are kept, merged when downsampling).
    """
    if steps_policy not in WARM_START_STEP_POLICIES:
        raise SearchSettingsError(
            f"warm-start steps policy must be one of {WARM_START_STEP_POLICIES}, got {steps_policy!r}"
        )
    out: list[Schedule] = []
    for item in items:
        for src, sched in _expand(item):
            try:
                sched.check_fits(space.layout, "the model being searched")
            except ModelMismatchError as e:
                raise ModelMismatchError(f"warm start {src}: {e}") from None
            if sched.steps != space.steps:
                if steps_policy == "refuse":
                    raise SearchSettingsError(
                        f"warm start {src}: the schedule has {sched.steps} steps but the search runs "
                        f"{space.steps} steps; search with {sched.steps} steps, or allow remapping "
                        f"(--remap-warm-start / warm_start_steps='remap')"
                    )
                sched = remap_steps(sched, space.steps)
            prov = dict(sched.provenance)
            prov["search_seed"] = {"kind": "warm-start", "source": src}
            out.append(sched.copy(provenance=prov))
    return out


def _expand(item) -> list[tuple[str, Schedule]]:
    if isinstance(item, Schedule):
        return [(f"<schedule {item.name!r}>", item)]
    p = Path(item)
    if p.is_dir():
        index = p / "front.json"
        if index.is_file():
            try:
                entries = json.loads(index.read_text(encoding="utf-8"))["points"]
                files = [p / e["file"] for e in entries]
            except (ValueError, KeyError, TypeError) as e:
                raise SearchSettingsError(f"warm start {index}: not a front index ({e})") from None
        else:
            files = sorted(f for f in p.glob("*.json") if f.name != "front.json")
        if not files:
            raise SearchSettingsError(f"warm start {p}: folder holds no schedule (*.json) files")
        return [(str(f), load_schedule(f)) for f in files]
    if not p.exists():
        raise SearchSettingsError(f"warm start {p}: file not found")
    return [(str(p), load_schedule(p))]


# -- the population ------------------------------------------------------------
def initial_population(
    space: GenomeSpace,
    size: int,
    *,
    seed: int = 0,
    warm_start: Sequence[Schedule] = (),
    heuristics: bool = True,
    probe: Sequence[Schedule] = (),
) -> list[Schedule]:
    """``size`` distinct schedules: warm starts, the unit probe's (``sensitivity.probe_seeds``), heuristics, then
    mutated copies (deterministic by seed)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise SearchSettingsError(f"population size must be an integer >= 2, got {size!r}")
    base = _unique(space, list(warm_start) + list(probe) + (heuristic_seeds(space) if heuristics else []))
    if not base:
        base = [no_cache(space)]
    if len(warm_start) > size:
        log.warning(
            "ECAD search: %d warm-start schedules for a population of %d; the first %d are used",
            len(warm_start),
            size,
            size,
        )
    pop = base[:size]
    if len(pop) >= size:
        return pop
    if space.length < 63 and 2**space.length < size:
        raise SearchSettingsError(
            f"population size {size} is larger than the number of distinct schedules "
            f"({2**space.length} for {space.steps} steps x {space.n_units} units)"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xEC4D]))
    seen = {genome_key(space.encode(s)) for s in pop}
    parents = list(pop)
    tries, i = 0, 0
    while len(pop) < size:
        parent = parents[i % len(parents)]
        share = SEED_MUTATION_SHARES[(i // len(parents)) % len(SEED_MUTATION_SHARES)]
        i += 1
        g = space.encode(parent).copy()
        flip = rng.random(space.length) < share
        if not flip.any():
            flip[rng.integers(space.length)] = True
        g[flip] = ~g[flip]
        info = {"kind": "mutated", "parent": parent.name, "bit_share": share, "flipped": int(flip.sum())}
        name = f"mutated-{parent.name}"[:200]
        tries += 1
        if tries > 200 * size:  # tiny genome spaces: fall back to uniform random genomes
            g = rng.random(space.length) < 0.5
            info, name = {"kind": "random"}, "random"
        k = genome_key(g)
        if k in seen:
            continue
        seen.add(k)
        pop.append(space.decode(g, name=name, provenance={"search_seed": info}))
    return pop


__all__ = [
    "evenly_cached",
    "heuristic_seeds",
    "initial_population",
    "load_warm_start",
    "no_cache",
    "recompute_all_every_n",
    "tgate_like",
    "type_mask",
    "types_every_n",
    "unit_types",
]
