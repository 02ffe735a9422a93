"""The rule-based caches users pick instead of a learned schedule, as run-time policies over ECAD's own engine.

* every-n: a static schedule (``Schedule.every_n``): all units recomputed at steps 0, n, 2n, ...
* first-block residual (FBCache / EasyCache-like): block 0 always computes; if the relative L1 change of its
  residual (output - input) since the last fully computed step is below ``threshold``, every other unit
  reuses its stored output at this step, else all compute and the residual is remembered.
* TeaCache-like: the relative L1 change of block 0's timestep-modulated input (its norm1 output with the
  step's shift/scale) is accumulated over steps; while the sum is below ``threshold`` the whole step reuses,
  else it computes and the sum restarts. Without TeaCache's per-model fitted polynomial (raw relative L1).

The engine is driven with an all-recompute schedule whose step rows the policy rewrites as the run goes (every
computed output is kept, since the next step's decision is not known yet). Decisions are per model call, over
the whole batch, as FBCache and TeaCache do for a batch. ``rows`` holds the realised bits of every run, so the
compute cost is measured with the same cost table as the learned schedules'.
"""

from __future__ import annotations

import numpy as np
import torch


def _rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))


def _hidden(args, kwargs) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


class Policy:
    """Base: installs on an applied handle (``install``) and rewrites the engine's rows step by step."""

    name = "policy"

    def __init__(self, threshold: float):
        self.threshold = float(threshold)
        self.rows: list[np.ndarray] = []  # realised bits of each finished run

    def describe(self) -> dict:
        return {"policy": self.name, "threshold": self.threshold}

    def install(self, handle, units) -> list:
        engine = self.engine = handle.engine
        self.block = units.blocks[0]
        self.n_units = units.layout.n_units
        begin = engine.begin_run

        def begin_run(*a, **kw):
            self._finish_rows()
            begin(*a, **kw)
            # keep every computed output: a later step may reuse it
            engine._keep = [[True] * self.n_units for _ in range(engine.active.steps)]
            self._run_rows = np.ones((engine.active.steps, self.n_units), bool)
            self.reset()

        engine.begin_run = begin_run
        mod = self.block.module
        hooks = [mod.register_forward_pre_hook(self._pre, with_kwargs=True)]
        hooks.append(mod.register_forward_hook(self._post, with_kwargs=True))
        self._run_rows = None
        return hooks

    def finish(self) -> None:
        self._finish_rows()

    def _finish_rows(self) -> None:
        if getattr(self, "_run_rows", None) is not None:
            self.rows.append(self._run_rows)
            self._run_rows = None

    def _set_row(self, row: list[bool]) -> None:
        step = self.engine.step
        self.engine._bits[step] = row
        self._run_rows[step] = row

    def reset(self) -> None:
        pass

    def _pre(self, module, args, kwargs):
        return None

    def _post(self, module, args, kwargs, output):
        return None


class FirstBlockResidual(Policy):
    name = "first-block-residual"

    def reset(self) -> None:
        self.prev: torch.Tensor | None = None
        self.inp: torch.Tensor | None = None

    def _pre(self, module, args, kwargs):
        if not self.engine.in_run:
            return
        self.inp = _hidden(args, kwargs)
        self._set_row([True] * self.n_units)  # block 0 computes; the rest decided after it

    def _post(self, module, args, kwargs, output):
        if not self.engine.in_run or self.inp is None:
            return
        out = output
        if isinstance(out, tuple):  # FLUX's double block: (text, image)
            out = next(o for o in reversed(out) if o.shape == self.inp.shape)
        res = out - self.inp
        if self.engine.step > 0 and self.prev is not None and _rel_l1(res, self.prev) < self.threshold:
            first, n = self.block.first_unit, self.block.n_units
            self._set_row([first <= u < first + n for u in range(self.n_units)])
        else:
            self.prev = res.detach().clone()


class AccumulatedInputChange(Policy):
    name = "teacache-like"

    def reset(self) -> None:
        self.prev: torch.Tensor | None = None
        self.acc = 0.0

    def _modulated(self, module, args, kwargs) -> torch.Tensor:
        h = _hidden(args, kwargs)
        if "temb" in kwargs:  # FLUX double block: AdaLayerNormZero(hidden, emb)
            return module.norm1(h, emb=kwargs["temb"])[0]
        t = kwargs["timestep"]  # PixArt: the block's shift/scale from the adaLN-single embedding
        shift, scale = (module.scale_shift_table[None] + t.reshape(h.shape[0], 6, -1)).chunk(6, dim=1)[:2]
        return module.norm1(h) * (1 + scale) + shift

    def _pre(self, module, args, kwargs):
        if not self.engine.in_run:
            return
        m = self._modulated(module, args, kwargs)
        if self.prev is not None:
            self.acc += _rel_l1(m, self.prev)
        self.prev = m.detach().clone()
        if self.engine.step == 0 or self.acc >= self.threshold:
            self.acc = 0.0
            self._set_row([True] * self.n_units)
        else:
            self._set_row([False] * self.n_units)


POLICIES = {"fbcache": FirstBlockResidual, "teacache": AccumulatedInputChange}
