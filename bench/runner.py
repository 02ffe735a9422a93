"""Runs cache variants of one denoiser side by side and reports speedups beside the ceiling.

Eager variants are interleaved round by round (and their order rotated), so a
drift of the machine during the run hits all of them alike; variants that keep
state across rounds (CUDA graphs, captured once) run as a block after them.
Round 0 is a warm-up: it also gives each variant's output (compared across
variants) and its peak memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .common import max_abs_diff, median, peak_bytes, spread, timed

# setup() -> (pre_step or None, teardown, stats_fn or None)
Setup = Callable[[], tuple]


@dataclass
class Variant:
    name: str
    setup: Setup
    preset: str | None = None
    kind: str = (
        "eager"  # "nocache", "engine", "ceiling", "anymodule", "graphs", "graphs-ceiling", "offload", "recompute"
    )
    persistent: bool = False  # set up once for all its rounds (CUDA graphs)
    info: dict = field(default_factory=dict)


def _one(den, v: Variant, state, device, measure_memory: bool):
    pre, _teardown, stats_fn = state
    if measure_memory:
        peak, x = peak_bytes(lambda: den.loop(pre), device)
        return None, x, peak, (stats_fn() if stats_fn else None)
    ms, x = timed(lambda: den.loop(pre), device)
    return ms, x, None, None


def run_variants(den, variants: list[Variant], *, rounds: int, warmup: int = 1, device="cpu", log=print) -> dict:
    res = {v.name: {"preset": v.preset, "kind": v.kind, "ms": [], **v.info} for v in variants}
    outs = {}
    eager = [v for v in variants if not v.persistent]
    for r in range(warmup + rounds):
        order = eager[r % len(eager) :] + eager[: r % len(eager)] if eager else []
        for v in order:
            state = v.setup()
            try:
                ms, x, peak, stats = _one(den, v, state, device, measure_memory=r == 0)
            finally:
                state[1]()
            if r == 0:
                outs[v.name] = x
                res[v.name].update(peak_bytes=peak, stats=stats)
            if r >= warmup:
                res[v.name]["ms"].append(ms)
    for v in variants:
        if not v.persistent:
            continue
        state = v.setup()
        try:
            for r in range(warmup + 1 + rounds):  # one more warm-up: the first round captures
                ms, x, peak, stats = _one(den, v, state, device, measure_memory=r == 0)
                if r == 0:
                    res[v.name].update(peak_bytes=peak)
                if r == 1:
                    outs[v.name] = x
                if r > warmup:
                    res[v.name]["ms"].append(ms)
            stats_fn = state[2]
            if stats_fn:
                res[v.name]["stats"] = stats_fn()
        finally:
            state[1]()
    for r in res.values():
        r["median_ms"] = median(r["ms"])
        r["spread_pct"] = round(spread(r["ms"]), 2)
    _derive(res, outs)
    for name, r in res.items():
        log(
            f"  {name:<34} {r['median_ms']:9.2f} ms  x{r.get('speedup', float('nan')):.2f}"
            + (f"  engine/ceiling {r['of_ceiling']:.3f}" if "of_ceiling" in r else "")
            + (f"  diff vs ref {r['diff_vs_ref']:.3g}" if r.get("diff_vs_ref") is not None else "")
        )
    return res


def _derive(res: dict, outs: dict) -> None:
    """Speedups vs no cache, engine/ceiling ratios, output differences against each variant's reference."""
    base = res.get("no cache", {}).get("median_ms")
    by_kind_preset = {(r["kind"], r["preset"]): n for n, r in res.items()}
    for name, r in res.items():
        if base:
            r["speedup"] = base / r["median_ms"]
        ref = None
        if r["kind"] in ("engine", "offload", "graphs") and r["preset"] is not None:
            # graph rows against the ceiling in graphs (none: no ratio), never against the eager one
            ceiling = "graphs-ceiling" if r["kind"] == "graphs" else "ceiling"
            ref = by_kind_preset.get((ceiling, r["preset"]))
            if ref and res[ref]["median_ms"]:
                r["of_ceiling"] = res[ref]["median_ms"] / r["median_ms"]
        if r["kind"] in ("graphs", "offload") and r["preset"] is not None:
            ref = by_kind_preset.get(("engine", r["preset"])) or ref
        if r["kind"] == "graphs-ceiling":
            ref = by_kind_preset.get(("ceiling", r["preset"]))
        if r["kind"] == "recompute" or (r["kind"] == "graphs" and r["preset"] is None):
            ref = "no cache"
        if ref and ref in outs and name in outs:
            r["diff_vs_ref"] = max_abs_diff(outs[name], outs[ref])
            r["ref"] = ref
        if r["kind"] == "recompute" and base:
            r["overhead_pct"] = 100.0 * (r["median_ms"] / base - 1)
