"""Per-run state of a patched ComfyUI model: step tracking through official wrappers.

* OUTER_SAMPLE wrapper: starts a run (steps and denoise from the sigmas), wraps
  the sampler callback, and in ``finally`` ends the run, frees the cache and
  logs the skip statistics with the measured denoising time.
* APPLY_MODEL wrapper: before every model evaluation, tells the engine the step
  and the branch (which conds are in this batch).

The step is the number of sampler steps completed so far, counted by the
sampler's own per-step callback (k-diffusion calls it once per step with its
index), so samplers that evaluate the model twice per step (Heun, DPM-2) and
cond/uncond split into separate calls all see the right step. If a sampler
never calls back, the step falls back to the position of the current sigma in
the run's sigmas.
"""

from __future__ import annotations

import logging
import time

import torch

from ..ecad_core.engine import CacheEngine

log = logging.getLogger("ecad")


def estimate_denoise(model_sampling, sigma0: float) -> float:
    """Fraction of the trajectory a run starting at sigma0 covers (1.0 for a full run)."""
    sigmas = getattr(model_sampling, "sigmas", None)
    if sigmas is None or len(sigmas) == 0:
        return 1.0
    sigmas = sigmas.float().cpu()
    if sigma0 >= float(sigmas.max()) * (1 - 1e-4):
        return 1.0
    return max(float((sigmas <= sigma0).float().mean()), 1e-3)


class ComfyRun:
    """Ties a CacheEngine to ComfyUI's sampling: one object per patched model."""

    def __init__(self, engine: CacheEngine, label: str, expected_speedup: float | None = None):
        self.engine = engine
        self.label = label
        self.expected_speedup = expected_speedup
        self.completed = 0
        self.sigmas: torch.Tensor | None = None
        self.callback_seen = False
        self.first_eval_checks = []  # callables run once after the first model evaluation
        self.pre_run_checks = []  # callables(latent_image) run before each sampling run
        self.capture = None  # FLUX adapter: outputs captured while the original block runs
        self.graph_mode = None  # ecad_core.engine.cuda_graphs.GraphMode when CUDA graphs are on
        self.graph_status: dict | None = None
        self.history: list[dict] = []

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options, where the run is kept: a clone of a patched model must
        # share it with the wrappers it keeps, not hold a copy of the engine (and its cache) that nothing runs
        return self

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
        guider = executor.class_obj
        steps = max(len(sigmas) - 1, 1)
        ms = guider.model_patcher.model.model_sampling
        denoise = estimate_denoise(ms, float(sigmas[0]))
        self.engine.begin_run(steps, denoise)
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
            elapsed = time.perf_counter() - start
            stats = self.engine.end_run()
            entry = {"seconds": elapsed, **stats.as_dict()}
            if self.graph_mode is not None:
                entry["cuda_graphs"] = self.graph_mode.status()
            elif self.graph_status is not None:
                entry["cuda_graphs"] = self.graph_status
            self.history.append(entry)
            exp = f", expected ~{self.expected_speedup:.2f}x fewer MACs" if self.expected_speedup else ""
            g = entry.get("cuda_graphs")
            if g:
                exp += (
                    f"; CUDA graphs: {g.get('replays', 0)} replays, {g.get('captures', 0)} captures"
                    if g.get("active") and not g.get("reason")
                    else f"; CUDA graphs off ({g.get('reason')})"
                )
            log.info("ECAD %s: %s; denoising took %.3f s%s", self.label, stats.summary(), elapsed, exp)

    # -- APPLY_MODEL ---------------------------------------------------------------
    def apply_model_wrapper(
        self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, *args, **kwargs
    ):
        topts = transformer_options or {}
        if self.engine.in_run:
            self.engine.set_position(self._step(topts), self._branch(topts))
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs)
        if self.first_eval_checks and self.engine.in_run:
            checks, self.first_eval_checks = self.first_eval_checks, []
            for check in checks:
                check()
        return out

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
