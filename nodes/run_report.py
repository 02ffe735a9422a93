"""What a sampling run reports where people look: a toast in the UI (``web/ecad.js`` listens to ``ecad.stats``)
and the log.

After each run of a model with a schedule applied: units reused, the MACs-expected speedup at the run's own
size and steps, and the measured denoising time against the last run of the same model at the same size and
steps without a schedule (a run through Apply with preset 'off'), when one was seen. Before the run, a schedule
made for another size or step count says in the log what to expect at this one.
"""

from __future__ import annotations

import logging
import threading
import time

from ..ecad_core import costs
from ..ecad_core.schedule import Schedule, remap_steps

log = logging.getLogger("ecad")

EVENT = "ecad.stats"
TIMING_KEY = "ecad_timing"  # the wrapper Apply 'off' adds to time runs without a schedule
LATENT_SCALE = 8  # pixels per latent cell of the VAEs of the supported models
_uncached: dict[tuple, float] = {}  # (model, height, width, steps) -> seconds of the last run without a schedule
_lock = threading.Lock()


def _size(latent_image, sigmas) -> tuple[int, int, int]:
    h, w = (int(n) * LATENT_SCALE for n in latent_image.shape[-2:])
    return h, w, max(len(sigmas) - 1, 1)


def _model_key(model_patcher) -> int:
    # the diffusion model object is shared by every clone of a loaded model
    return id(getattr(model_patcher, "model", model_patcher))


def model_arch(adapter):
    """The cost model's numbers read from the loaded module (a fine-tune or a tiny test model is costed as it
    is), else the variant's name; None when there is no cost model for it."""
    try:
        arch = adapter.arch(adapter.arch_hint or "comfy-model")
    except (AttributeError, TypeError, ValueError, IndexError):
        arch = None
    return arch if arch is not None else adapter.arch_hint


def made_for(s: Schedule) -> tuple[int, int] | None:
    res = (s.provenance or {}).get("resolution")
    if isinstance(res, list) and len(res) == 2 and all(isinstance(v, int) and v > 0 for v in res):
        return res[0], res[1]
    return None


def expected_at(s: Schedule, arch, height: int, width: int, steps: int) -> float | None:
    """MACs-expected speedup of ``s`` at this size and step count (the schedule fitted to ``steps``)."""
    if arch is None:
        return None
    try:
        fitted = s if steps == s.steps else remap_steps(s, steps)
        return costs.expected_speedup(fitted, arch, height, width)
    except Exception:  # noqa: BLE001 - the cost model does not cover every model and size
        return None


def expectation_line(s: Schedule, arch, height: int, width: int, steps: int) -> str | None:
    """The log line of a schedule used at another size or step count than it was made for; None otherwise."""
    res = made_for(s)
    if (res is None or res == (height, width)) and steps == s.steps:
        return None
    here = expected_at(s, arch, height, width, steps)
    there = f"{res[1]}x{res[0]}, " if res else ""
    at_origin = expected_at(s, arch, res[0], res[1], s.steps) if res else None
    origin = f" (~{at_origin:.2f}x fewer MACs there)" if at_origin else ""
    expect = f"expect ~{here:.2f}x fewer MACs" if here else "the cost model cannot say what to expect"
    return (
        f"ECAD {s.name}: made for {there}{s.steps} steps{origin}; this run is {width}x{height}, {steps} steps: "
        f"{expect} (measured speedups depend on the GPU)"
    )


def stats_text(label: str, entry: dict, expected: float | None, size: tuple[int, int, int], base: float | None):
    h, w, steps = size
    computed, reused = entry.get("computed", 0), entry.get("reused", 0)
    total = computed + reused
    pct = 100.0 * reused / total if total else 0.0
    parts = [f"{label}: {reused}/{total} unit calls reused ({pct:.0f}%)"]
    if expected:
        parts.append(f"~{expected:.2f}x fewer MACs expected at {w}x{h}, {steps} steps")
    secs = float(entry.get("seconds", 0.0))
    timing = f"denoising {secs:.2f} s"
    if base:
        timing += f" vs {base:.2f} s without a schedule: {base / secs:.2f}x measured" if secs > 0 else ""
    parts.append(timing)
    return "; ".join(parts)


def publish(payload: dict) -> None:
    """Sends the run's statistics to the browser that queued the prompt (all browsers when unknown)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    srv = getattr(PromptServer, "instance", None)
    if srv is None:
        return
    try:
        srv.send_sync(EVENT, payload, getattr(srv, "client_id", None))
    except Exception as e:  # noqa: BLE001 - a report must never fail the run
        log.warning("ECAD: cannot send the run statistics to the UI (%s)", e)


def attach(m, schedule: Schedule, arch, wrapper_key: str) -> None:
    """Reports each run of the patched clone ``m``: outermost in ECAD's own OUTER_SAMPLE wrappers (same key, so
    a later Apply that replaces this one removes it too), so the run's statistics are complete when it reads
    them."""
    import comfy.patcher_extension as pe

    run = m.model_options.get("transformer_options", {}).get("ecad")
    if run is None:
        return

    def report_wrapper(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        size = _size(latent_image, sigmas)
        line = expectation_line(schedule, arch, *size)
        if line:
            log.info(line)
        seen = len(run.history)
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            if len(run.history) > seen:
                try:
                    report(run.label, run.history[-1], executor.class_obj.model_patcher, size)
                except Exception as e:  # noqa: BLE001 - a report must never fail (or mask the error of) the run
                    log.warning("ECAD: cannot report the run's statistics (%s)", e)

    def report(label, entry, model_patcher, size):
        with _lock:
            base = _uncached.get((_model_key(model_patcher), *size))
        # the run's own number (the rows it used, at its size) where the run wrapper gives one
        expected = entry["expected_speedup"] if "expected_speedup" in entry else expected_at(schedule, arch, *size)
        text = stats_text(label, entry, expected, size, base)
        secs = float(entry.get("seconds") or 0.0)
        if base and secs > 0:  # the run's own log line has the rest
            log.info(
                "ECAD %s: %.2fx measured against the last run without a schedule (%.3f s)", label, base / secs, base
            )
        publish(
            {
                "text": text,
                "schedule": label,
                "reused": entry.get("reused"),
                "computed": entry.get("computed"),
                "expected_speedup": expected,
                "seconds": entry.get("seconds"),
                "uncached_seconds": base,
                "height": size[0],
                "width": size[1],
                "steps": size[2],
            }
        )

    wrappers = m.wrappers.setdefault(pe.WrappersMP.OUTER_SAMPLE, {}).setdefault(wrapper_key, [])
    wrappers.insert(0, report_wrapper)  # index 0 is the outermost: the run's own wrapper has ended the run


def timing_clone(model):
    """``model`` with a wrapper that times its runs (Apply 'off'): the baseline of the measured speedup."""
    import comfy.patcher_extension as pe

    def timing_wrapper(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        mp = executor.class_obj.model_patcher
        if mp.model_options.get("transformer_options", {}).get("ecad") is not None:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)  # a schedule applied later
        size = _size(latent_image, sigmas)
        start = time.perf_counter()
        out = executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        with _lock:
            _uncached[(_model_key(mp), *size)] = time.perf_counter() - start
        return out

    m = model.clone()
    m.remove_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, TIMING_KEY)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, TIMING_KEY, timing_wrapper)
    return m
