"""Hooks that route a model's units through the engine.

One hook class per job, attached to a module instance and removed cleanly
(the diffusers ``hooks/`` pattern): attaching sets an instance attribute
``forward``; detaching deletes it, so the module is exactly as it was.

* ``UnitHook``: wraps a component module's own forward (nothing re-stated).
* ``PixArtBlockHook``: a diffusers PixArt block (``BasicTransformerBlock`` with
  ``norm_type="ada_norm_single"``) re-stated so that the norm + modulation
  feeding ``attn1`` / ``ff`` run only when that unit computes; checked bit for
  bit against the block's own forward at its first call.
"""
from __future__ import annotations

import functools

import torch

from .engine import CacheEngine
from .errors import SelfCheckError

_ATTR = "_ecad_unit_hook"


class _ForwardHook:
    """Attaching sets the module's instance ``forward``; detaching restores exactly what was there."""

    name: str
    module: torch.nn.Module | None = None

    def _install(self, module: torch.nn.Module, make_forward):
        """Set ``module.forward = make_forward(current forward)``."""
        if getattr(module, _ATTR, None) is not None:
            raise RuntimeError(f"{self.name}: this module already has an ECAD hook; remove the other "
                               f"schedule first (handle.remove())")
        self.module = module
        self._had_instance_forward = "forward" in module.__dict__
        self._previous_forward = module.forward
        module.forward = make_forward(self._previous_forward)
        setattr(module, _ATTR, self)
        return self

    def detach(self) -> None:
        m = self.module
        if m is None:
            return
        if self._had_instance_forward:
            m.forward = self._previous_forward
        else:
            del m.forward
        delattr(m, _ATTR)
        self.module = None


class UnitHook(_ForwardHook):
    """Serves one unit (block, component) of a model from the engine."""

    def __init__(self, engine: CacheEngine, unit: int, name: str):
        self.engine = engine
        self.unit = unit
        self.name = name

    def attach(self, module: torch.nn.Module) -> "UnitHook":
        engine, unit = self.engine, self.unit

        def make_forward(original):
            @functools.wraps(original)
            def forward(*args, **kwargs):
                return engine.call(unit, original, args, kwargs)
            return forward
        return self._install(module, make_forward)


def has_hook(module: torch.nn.Module) -> bool:
    return getattr(module, _ATTR, None) is not None


def restatement_mismatch(ref, mine) -> str | None:
    """None when a re-stated block's output equals the block's own bit for bit, else what differs."""
    if isinstance(ref, torch.Tensor) and isinstance(mine, torch.Tensor) and ref.shape == mine.shape:
        if torch.equal(ref, mine):
            return None
        return f"max abs diff {(ref.float() - mine.float()).abs().max().item():.3g}"
    return (f"output {type(ref).__name__} of shape {tuple(getattr(ref, 'shape', ()))} against "
            f"{type(mine).__name__} of shape {tuple(getattr(mine, 'shape', ()))}")


class FirstUseCheck:
    """Shared by the block hooks of one model: the re-statement is compared with the block once."""

    def __init__(self):
        self.done = False


class PixArtBlockHook(_ForwardHook):
    """Serves units ``unit`` .. ``unit + 2`` (attn1, attn2, ff) of one diffusers PixArt block from the engine."""

    def __init__(self, engine: CacheEngine, unit: int, name: str, check: FirstUseCheck):
        self.engine, self.unit, self.name, self.check = engine, unit, name, check

    @staticmethod
    def unfit_reason(block: torch.nn.Module) -> str | None:
        """Why ``block`` is not the configuration the re-statement covers (None: it is)."""
        for attr in ("scale_shift_table", "norm1", "norm2", "attn1", "attn2", "ff"):
            if getattr(block, attr, None) is None:
                return f"no {attr}"
        if getattr(block, "norm_type", None) != "ada_norm_single":
            return f"norm_type {getattr(block, 'norm_type', None)!r}"
        if getattr(block, "pos_embed", None) is not None or getattr(block, "only_cross_attention", False):
            return "positional embedding or cross-attention only"
        if getattr(block, "_chunk_size", None) is not None:
            return "chunked feed-forward"
        if "forward" in block.__dict__:  # e.g. accelerate's offload hook, which the re-statement would bypass
            return "its forward is already wrapped"
        return None

    def attach(self, block: torch.nn.Module) -> "PixArtBlockHook":
        engine, check = self.engine, self.check

        def make_forward(original):
            @functools.wraps(original)
            def forward(*args, **kwargs):
                if not engine.active_for():
                    return original(*args, **kwargs)
                if not check.done:
                    self._check(original, args, kwargs)
                return self._restated(*args, **kwargs)
            return forward
        return self._install(block, make_forward)

    def _restated(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                  encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None, class_labels=None,
                  added_cond_kwargs=None):
        """``BasicTransformerBlock.forward`` (diffusers 0.3x-0.4x) for PixArt, with its units through the engine."""
        blk, eng, unit = self.module, self.engine, self.unit
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            blk.scale_shift_table[None] + timestep.reshape(hidden_states.shape[0], 6, -1)).chunk(6, dim=1)
        cross_attention_kwargs = cross_attention_kwargs.copy() if cross_attention_kwargs is not None else {}
        gligen_kwargs = cross_attention_kwargs.pop("gligen", None)
        mask = {"attention_mask": attention_mask}

        def attn1():
            norm_hidden_states = blk.norm1(hidden_states)
            norm_hidden_states = norm_hidden_states * (1 + scale_msa) + shift_msa
            return blk.attn1(norm_hidden_states, encoder_hidden_states=None, attention_mask=attention_mask,
                             **cross_attention_kwargs)
        attn_output = gate_msa * eng.call_lazy(unit, attn1, (hidden_states,), mask)
        hidden_states = attn_output + hidden_states
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.squeeze(1)
        if gligen_kwargs is not None:
            hidden_states = blk.fuser(hidden_states, gligen_kwargs["objs"])

        def attn2():
            return blk.attn2(hidden_states, encoder_hidden_states=encoder_hidden_states,
                             attention_mask=encoder_attention_mask, **cross_attention_kwargs)
        hidden_states = eng.call_lazy(unit + 1, attn2, (hidden_states, encoder_hidden_states),
                                      {"attention_mask": encoder_attention_mask}) + hidden_states

        def ff():
            norm_hidden_states = blk.norm2(hidden_states)
            norm_hidden_states = norm_hidden_states * (1 + scale_mlp) + shift_mlp
            return blk.ff(norm_hidden_states)
        hidden_states = gate_mlp * eng.call_lazy(unit + 2, ff, (hidden_states,)) + hidden_states
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.squeeze(1)
        return hidden_states

    def _check(self, original, args, kwargs) -> None:
        with self.engine.paused():
            ref = original(*args, **kwargs)
            try:
                mine = self._restated(*args, **kwargs)
            except TypeError as e:  # the block's signature changed
                raise SelfCheckError(f"ECAD self-check failed: {self.name}'s forward takes other arguments "
                                     f"than this release's PixArt block re-statement ({e})") from None
        why = restatement_mismatch(ref, mine)
        if why:
            raise SelfCheckError(
                f"ECAD self-check failed: the PixArt block re-statement differs from {self.name}'s own forward "
                f"({why}); this diffusers version is not supported by this ECAD release - refusing to produce "
                f"a different image")
        self.check.done = True
