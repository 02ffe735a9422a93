"""Per-run state of a patched ComfyUI model: step tracking through official wrappers.

* OUTER_SAMPLE wrapper: starts a run (where its steps sit on their trajectory, from the sigmas: ``place``),
  wraps the sampler callback, and in ``finally`` ends the run, frees the cache, logs what the run used and its
  statistics, and hands the run's summary to ``listeners``.
* APPLY_MODEL wrapper: before every model evaluation, tells the engine the step and the branch (which conds
  are in this batch); a model call in which no unit ran (another cache node served it) is counted as skipped.

The step is the number of sampler steps completed so far, counted by the sampler's own per-step callback
(k-diffusion calls it once per step with its index), so samplers that evaluate the model twice per step (Heun,
DPM-2) and cond/uncond split into separate calls all see the right step. If a sampler never calls back, the step
falls back to the position of the current sigma in the run's sigmas.

Where a run sits (docs/schedule-format.md, "Fitting a run"): ComfyUI's samplers run a slice of a full sigma list
(KSampler at denoise < 1: the tail of int(steps/denoise) steps; KSamplerAdvanced start/end_at_step and
SplitSigmas: any slice). ``place`` finds that list by recomputing the model's sigmas for each of ComfyUI's
schedulers and step counts until one holds the run's sigmas, so the position does not depend on the scheduler;
a run that starts where an earlier one stopped early (last sigma > 0) continues it, across models too (Wan
2.2's two experts each with their own Apply).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ecad_core.engine import CacheEngine
from ..ecad_core.errors import EcadError
from ..ecad_core.schedule.remap import Slice

log = logging.getLogger("ecad")

LATENT_SCALE = 8  # pixels per latent cell of the VAEs of the supported models
MAX_FULL = 1000  # longest full sigma list searched (ComfyUI's KSampler: int(steps / denoise))


@dataclass
class Placement:
    """A run's place: its slice of the trajectory and, for a split run, which stage it is."""

    slice: Slice
    stage: int | None = None  # 1, 2, ... when the run is a stage of a split run (None: not split, or unknown)
    found: bool = True  # False: no scheduler's sigmas hold the run's (read as a whole run)
    ends_early: bool = False

    def words(self) -> str:
        sl = self.slice
        if not self.found:
            return "(sigmas not found among ComfyUI's schedulers: read as a whole run)"
        if self.stage is not None or self.ends_early:
            which = f"stage {self.stage}" if self.stage else "a stage"
            return f"({which} of a split run)"
        if sl.start > 0:
            return f"img2img at denoise {sl.steps / sl.full:.3g}"
        return ""


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6))


def _full_list(model_sampling, name: str, discard: bool, n: int) -> torch.Tensor | None:
    """The full sigma list of ``n`` steps ComfyUI's scheduler ``name`` makes for this model (``discard``: as
    for the samplers that drop the penultimate sigma, uni_pc and dpm_2)."""
    import comfy.samplers as cs

    try:
        full = cs.calculate_sigmas(model_sampling, name, n + 1 if discard else n).float().cpu()
    except Exception:  # noqa: BLE001 - a scheduler that cannot make this many steps holds no run
        return None
    if discard:
        full = torch.cat([full[:-2], full[-1:]])
    return full if len(full) == n + 1 else None


def _holds(full: torch.Tensor | None, sig: torch.Tensor, start: int) -> bool:
    """Whether ``full[start:]`` begins with the run's sigmas (a stage cut with force_full_denoise ends at 0)."""
    T = len(sig) - 1
    if full is None or start < 0 or start + T > len(full) - 1:
        return False
    part = full[start : start + T + 1]
    if _close(part, sig):
        return True
    return float(sig[-1]) == 0.0 and _close(part[:-1], sig[:-1])


_found: dict[tuple, Slice | None] = {}  # (model sampling, the run's sigmas) -> slice: a workflow run again


def find_slice_cached(model_sampling, sig: torch.Tensor) -> Slice | None:
    key = (id(model_sampling), type(model_sampling).__name__, sig.numpy().tobytes())
    if key not in _found:
        if len(_found) > 64:
            _found.clear()
        _found[key] = find_slice(model_sampling, sig)
    return _found[key]


def find_slice(model_sampling, sig: torch.Tensor, budget_s: float = 1.0) -> Slice | None:
    """The slice of a ComfyUI scheduler's full sigma list the run's sigmas ``sig`` are, or None (a middle slice,
    or sigmas no scheduler makes within ``budget_s`` of searching).

    A run starting at the model's highest sigma and ending at 0 is a whole run, whatever the scheduler, unless its
    sigmas but the last begin a longer list (a first stage cut short to 0). Otherwise
    one end is known (a stage that stops early starts at step 0; a run ending at 0 is the list's tail), and the
    full step count n is the first for which some scheduler's list holds the run; for a given n, the plain list
    is tried before the one the penultimate-dropping samplers make from n - 1 (their first steps are alike)."""
    import comfy.samplers as cs

    T = len(sig) - 1
    smax = float(getattr(model_sampling, "sigma_max", float(sig[0])))
    at_top = float(sig[0]) >= smax * (1 - 1e-4)
    ends_early = float(sig[-1]) > 0
    if not at_top and ends_early:
        return None
    if at_top and not ends_early:
        if any(
            _close(f, sig)
            for name in cs.SCHEDULER_NAMES
            for d in (False, True)
            if (f := _full_list(model_sampling, name, d, T)) is not None
        ):
            return Slice(T)  # a whole run
        # a first stage cut short to 0 (KSamplerAdvanced end_at_step without leftover noise): search below;
        # custom sigmas from the top to 0 are a whole run too
    deadline = time.perf_counter() + budget_s
    for n in range(T + 1, min(MAX_FULL, 10 * T + 10) + 1):
        for discard in (False, True):
            m = n - 1 if discard else n
            start = 0 if at_top else m - T
            for name in cs.SCHEDULER_NAMES:
                if _holds(_full_list(model_sampling, name, discard, m), sig, start):
                    if (
                        at_top
                        and name == "sgm_uniform"
                        and _holds(_full_list(model_sampling, "normal", False, m + 1), sig, 0)
                    ):
                        # sgm_uniform's m steps begin exactly as normal's m+1: take the commoner one
                        m += 1
                    return Slice(T, start if not at_top else 0, m)
        if time.perf_counter() > deadline:
            log.info("ECAD: no scheduler's sigmas up to %d steps hold this run's %d steps", n, T)
            break
    return Slice(T) if at_top and not ends_early else None


class _Trajectories:
    """Stages that stopped early (last sigma > 0), so a later run starting at that sigma continues them: shared
    by every patched model (Wan 2.2's experts are two models with an Apply each)."""

    def __init__(self):
        # last sigma -> [(the stage's slice, its stage number)], oldest first (stages of several chains may stop at
        # the same sigma)
        self._open: dict[float, list[tuple[Slice, int]]] = {}
        self._lock = threading.Lock()

    def place(self, model_sampling, sigmas: torch.Tensor) -> Placement:
        sig = sigmas.detach().double().cpu().reshape(-1)
        T = max(len(sig) - 1, 1)
        ends_early = float(sig[-1]) > 0
        with self._lock:
            waiting = self._open.get(round(float(sig[0]), 6))
            prev = waiting.pop(0) if waiting else None
        if len(sig) < 2:
            return Placement(Slice(T))
        sl = find_slice_cached(model_sampling, sig.float())
        stage = None
        if prev is not None:
            before, stage_before = prev
            stage = stage_before + 1
            if sl is None or sl.start != before.start + before.steps:
                # not held by a scheduler's list (custom sigmas): count steps across the stages
                sl = Slice(T, before.start + before.steps, max(before.full, before.start + before.steps + T))
        elif ends_early:
            stage = 1 if sl is not None and sl.start == 0 else None
        found = sl is not None
        if sl is None:
            sl = Slice(T)
        if ends_early:
            with self._lock:
                if sum(len(v) for v in self._open.values()) > 64:  # stages whose continuation never came
                    self._open.clear()
                self._open.setdefault(round(float(sig[-1]), 6), []).append((sl, stage or 1))
        return Placement(sl, stage, found, ends_early)


TRAJECTORIES = _Trajectories()


def arch_of(model_patcher):
    """The cost model's numbers of the loaded model (None: no cost model for it)."""
    try:
        from .adapters import adapter_for

        adapter = adapter_for(model_patcher)
        return adapter.arch(adapter.arch_hint or "comfy-model")
    except Exception:  # noqa: BLE001 - no cost model: the log says the fraction only
        return None


class ComfyRun:
    """Ties a CacheEngine to ComfyUI's sampling: one object per patched model."""

    def __init__(self, engine: CacheEngine, label: str, expected_speedup: float | None = None):
        self.engine = engine
        self.label = label
        self.expected_speedup = expected_speedup  # at the schedule's own size (the run reports its own)
        self.completed = 0
        self.sigmas: torch.Tensor | None = None
        self.callback_seen = False
        self.first_eval_checks = []  # callables run once after the first model evaluation
        self.pre_run_checks = []  # callables(latent_image) run before each sampling run
        self.capture = None  # FLUX adapter: outputs captured while the original block runs
        self.graph_mode = None  # ecad_core.engine.cuda_graphs.GraphMode when CUDA graphs are on
        self.graph_status: dict | None = None
        self.history: list[dict] = []  # one summary per finished run (see ``last_summary``)
        # called with each finished run's summary (the dict ``last_summary`` returns); a failing one is logged
        self.listeners: list[Callable[[dict], None]] = []
        self.placement: Placement | None = None
        self._sizes_checked: set[tuple] = set()  # model-call sizes that passed pre_run_checks this run
        self._arch: object = None
        self._arch_read = False

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options, where the run is kept: a clone of a patched model must
        # share it with the wrappers it keeps, not hold a copy of the engine (and its cache) that nothing runs
        return self

    def last_summary(self) -> dict | None:
        """The last finished run: the engine's statistics (``RunStats.as_dict``) plus ``seconds``, ``position``
        (in words), ``stage``, ``height`` / ``width`` (pixels), ``expected_speedup`` (MACs, of the rows the run
        used, at its size; None where the cost model does not cover the model) and ``log`` (the logged line)."""
        return self.history[-1] if self.history else None

    def _speedup(self, model_patcher, latent_image) -> tuple[float | None, int, int]:
        h, w = (int(n) * LATENT_SCALE for n in latent_image.shape[-2:])
        if not self._arch_read:
            self._arch, self._arch_read = arch_of(model_patcher), True
        if self._arch is None:
            return None, h, w
        from ..ecad_core import costs

        try:
            return costs.expected_speedup(self.engine.active, self._arch, h, w), h, w
        except Exception:  # noqa: BLE001 - the cost model does not cover this size
            return None, h, w

    # -- OUTER_SAMPLE ------------------------------------------------------------
    def outer_sample_wrapper(
        self,
        executor,
        noise,
        latent_image,
        sampler,
        sigmas,
        denoise_mask=None,
        callback=None,
        disable_pbar=False,
        seed=None,
        *args,
        **kwargs,
    ):
        for check in self.pre_run_checks:
            check(latent_image)
        self._sizes_checked = {tuple(latent_image.shape[-2:])}
        guider = executor.class_obj
        mp = guider.model_patcher
        pl = self.placement = TRAJECTORIES.place(mp.get_model_object("model_sampling"), sigmas)
        sl = pl.slice
        self.engine.begin_run(sl.steps, start=sl.start, total=sl.full)
        self.completed, self.callback_seen = 0, False
        self.sigmas = sigmas.detach().float().cpu()

        def step_callback(step, x0, x, total_steps):
            self.completed = int(step) + 1
            self.callback_seen = True
            if callback is not None:
                return callback(step, x0, x, total_steps)

        start = time.perf_counter()
        try:
            return executor(
                noise, latent_image, sampler, sigmas, denoise_mask, step_callback, disable_pbar, seed, *args, **kwargs
            )
        finally:
            self._finish(time.perf_counter() - start, mp, latent_image)

    def _finish(self, elapsed: float, mp, latent_image) -> None:
        # steps the sampler completed without calling the model (LazyCache serves them before apply_model)
        for step in self.engine.steps_without_calls(self.completed):
            self.engine.model_call_skipped(step)
        stats = self.engine.end_run()
        pl = self.placement
        speedup, h, w = self._speedup(mp, latent_image)
        entry = {"seconds": elapsed, **stats.as_dict()}
        words = pl.words() if pl is not None else ""
        if words.startswith("img2img"):
            where = f"{words}: {stats.position()}"
        else:
            where = stats.position(words)
        entry.update(
            position=where,
            stage=pl.stage if pl is not None else None,
            height=h,
            width=w,
            expected_speedup=speedup,
        )
        if self.graph_mode is not None:
            entry["cuda_graphs"] = self.graph_mode.status()
        elif self.graph_status is not None:
            entry["cuda_graphs"] = self.graph_status
        used = f"rows used recompute {100 * stats.rows_recompute_fraction:.1f}% of units"
        used += f", ~{speedup:.2f}x fewer MACs expected at {w}x{h}" if speedup else ""
        if stats.start > 0 and stats.first_step_reuses:
            used += (
                f"; step {stats.start} computed {stats.first_step_reuses} unit(s) its row reuses: "
                f"nothing is cached before a run's first step"
            )
        g = entry.get("cuda_graphs")
        if g:
            used += (
                f"; CUDA graphs: {g.get('replays', 0)} replays, {g.get('captures', 0)} captures"
                if g.get("active") and not g.get("reason")
                else f"; CUDA graphs off ({g.get('reason')})"
            )
        if stats.cache_bytes:  # what the cache held at the run's end (video models: every frame's tokens)
            off = self.engine.offload_device
            used += f"; cache {stats.cache_bytes / 2**20:.2f} MiB" + (f" offloaded to {off}" if off is not None else "")
        per_step = ",".join(str(n) for n in stats.reused.tolist())
        line = (
            f"ECAD {self.label}: {stats.summary()}; {where}; {used}; reused per step {per_step}; "
            f"denoising took {elapsed:.3f} s"
        )
        entry["log"] = line
        self.history.append(entry)
        log.info("%s", line)
        for listener in list(self.listeners):
            try:
                listener(entry)
            except Exception as e:  # noqa: BLE001 - a listener never fails the run
                log.warning("ECAD: a run listener failed (%s: %s)", type(e).__name__, e)

    # -- APPLY_MODEL ---------------------------------------------------------------
    def apply_model_wrapper(
        self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, *args, **kwargs
    ):
        topts = transformer_options or {}
        if self.pre_run_checks and tuple(x.shape[-2:]) not in self._sizes_checked:
            self._check_area(x)
        eng = self.engine
        counted = None
        if eng.in_run:
            eng.set_position(self._step(topts), self._branch(topts))
            if eng.enabled:
                counted = eng.units_counted()
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs)
        if counted is not None and eng.in_run and eng.enabled and eng.units_counted() == counted:
            eng.model_call_skipped()  # another node (EasyCache, LazyCache) served this call: no unit ran
        if self.first_eval_checks and self.engine.in_run:
            checks, self.first_eval_checks = self.first_eval_checks, []
            for check in checks:
                check()
        return out

    def _check_area(self, x) -> None:
        """A model call on a part of the latent (area conditioning crops it) passes the latent's size checks
        too: PixArt below its size limit otherwise fails inside ComfyUI with a bare ZeroDivisionError."""
        self._sizes_checked.add(tuple(x.shape[-2:]))
        for check in self.pre_run_checks:
            try:
                check(x)
            except EcadError as e:
                h, w = (int(n) * LATENT_SCALE for n in x.shape[-2:])
                raise type(e)(
                    f"ECAD: an area conditioning makes the model sample a {w}x{h} px area of the latent, and "
                    f"{str(e).removeprefix('ECAD: ')} (make the area larger)"
                ) from None

    def _step(self, topts) -> int:
        step = self.completed
        if not self.callback_seen and self.sigmas is not None and "sigmas" in topts:
            # no per-step callback: locate the current sigma among the run's sigmas
            cur = float(topts["sigmas"].reshape(-1)[0])
            idx = int(torch.argmin((self.sigmas - cur).abs()))
            if idx > step + 1:
                step = idx
        return min(step, self.engine.active.steps - 1)

    @staticmethod
    def _branch(topts):
        # Split cond/uncond calls keep separate caches; one CFG batch is one branch.
        uuids = topts.get("uuids")
        if uuids:
            return tuple(str(u) for u in uuids)
        return tuple(topts.get("cond_or_uncond") or ())
