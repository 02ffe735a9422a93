"""``ComfyAdapter``: how one model family's ComfyUI diffusion model is cached; the machinery every family shares.

An adapter declares which ComfyUI models it serves (``classes``: dotted paths, imported only when a model is
checked), its layout, its units as (block, component, submodule path) and the MACs numbers read from the loaded
module (``arch``). How the units are hooked, from the most to the least specific:

1. a block re-statement (``Restatement``: ``unfit`` / ``restated`` / ``check``, the same pieces as the diffusers
   ``BlockHook``), installed by the family's own ``install``: a reused unit's input is never built;
2. ``install_modules``: every unit's submodule wrapped (an object patch of its ``forward``), so any family
   whose units are modules is cached with ECAD's semantics and no re-statement;
3. ``install_block_reuse``: ComfyUI's ``patches_replace["dit"]`` block hooks, reusing a block's residual.

A ComfyUI update must never fail a user's run: ``guarded`` (the one check wrapper of every re-statement, built on
``ecad_core.hooks.check_once``) checks each block against ComfyUI's own at its first call with each new call shape
(``call_key``); a mismatch, or a re-statement that cannot run, logs one warning (``HookPath``) and switches the
model to its fallback for that call and every later one. ``install_fallback`` picks the fallback where a
re-statement is unfit from the start: module caching, else block reuse, else no cache.
Every patch ECAD installs is marked (``mark``), so that a later Apply node removes the earlier one's
(``nodes/patching.py``).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...ecad_core.costs import Arch, ComputeCost, macs_cost, uniform_cost
from ...ecad_core.engine import signature
from ...ecad_core.engine.compiling import outside_compile
from ...ecad_core.engine.cuda_graphs import GraphMode
from ...ecad_core.errors import SelfCheckError
from ...ecad_core.hooks import call_key, check_once
from ...ecad_core.schedule import Layout, make_layout

log = logging.getLogger("ecad")


def comfy_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except Exception:  # noqa: BLE001 - a ComfyUI without the version module (or a broken one)
        return "unknown"


def mark(fn):
    """``fn`` marked as an ECAD patch (object patch or dit block patch)."""
    fn.ecad_patch = True
    return fn


def is_ecad_patch(fn) -> bool:
    if getattr(fn, "ecad_patch", False):
        return True
    # the CUDA-graph forward (nodes/comfy_graphs.py): a GraphMode's method, wrapped by outside_compile
    inner = getattr(fn, "__wrapped__", fn)
    return isinstance(getattr(inner, "__self__", None), GraphMode)


@functools.cache
def _model_class(dotted: str) -> type | None:
    module, _, name = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) else None


def is_instance(obj: object, dotted: str) -> bool:
    """Whether ``obj`` is an instance of the ComfyUI class at ``dotted`` (imported on first use); where that path
    does not import (a ComfyUI that moved the class), a class of the same name in ``obj``'s MRO counts."""
    cls = _model_class(dotted)
    if cls is not None:
        return isinstance(obj, cls)
    name = dotted.rpartition(".")[2]
    return any(c.__name__ == name for c in type(obj).__mro__)


@dataclass(frozen=True)
class Unit:
    """One unit, in the layout's flat order."""

    block: str  # the block's path in the diffusion model: "blocks.3", "double_blocks.0"
    component: str  # the layout's component: "attn1"
    path: str | None  # the submodule whose output is the unit's output; None: no single module computes it


@dataclass(frozen=True)
class BlockPoint:
    """A block as ComfyUI's ``patches_replace["dit"]`` names it, and its units."""

    point: str  # "double_block" / "single_block"
    index: int
    first_unit: int
    n_units: int


class ComfyAdapter:
    """One family's ComfyUI diffusion models. Subclass it in a module of ``nodes/adapters``."""

    family: ClassVar[str]  # the ``ecad_core.families`` record
    supports: ClassVar[str]  # for the refusal of other models: "PixArt-α/Σ"
    order: ClassVar[int] = 50  # matching order
    classes: ClassVar[tuple[str, ...]] = ()  # dotted paths of the ComfyUI model classes it serves
    excludes: ClassVar[tuple[str, ...]] = ()  # subclasses (or look-alikes) it does not serve
    # each unit's computation runs through the engine on its own, so the latency objective can time it
    units_timeable: ClassVar[bool] = False
    # keyword arguments of the diffusion model's forward that are graph inputs, when its forward uses nothing
    # else (CUDA-graph mode, nodes/comfy_graphs.py); None: graphs not offered
    graph_kwargs: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, diffusion_model: torch.nn.Module):
        self.dm = diffusion_model

    @classmethod
    def matches(cls, diffusion_model: object) -> bool:
        return any(is_instance(diffusion_model, c) for c in cls.classes) and not any(
            is_instance(diffusion_model, c) for c in cls.excludes
        )

    # -- what the model is ----------------------------------------------------------------------------
    def counts(self) -> tuple[int, ...]:
        """Block count of each group of the family's layout."""
        raise NotImplementedError

    @property
    def layout(self) -> Layout:
        return make_layout(self.family, *self.counts())

    @property
    def arch_hint(self) -> str | None:
        """The variant the loaded model is (``pixart-sigma``): the schedule model hint it matches."""
        return None

    @property
    def kind(self) -> str:
        """The model, for messages: "ComfyUI PixArt (pixart-alpha, 28 blocks)"."""
        return f"ComfyUI {type(self.dm).__name__}"

    def arch(self, name: str) -> Arch | None:
        """The cost model's numbers read from the loaded module (None: no cost model for it)."""
        return None

    def units(self) -> list[Unit]:
        """Every unit in the layout's flat order, with the submodule that computes it where there is one."""
        raise NotImplementedError

    def block_points(self) -> list[BlockPoint]:
        """The blocks ComfyUI's dit block hooks reach (empty: the model offers none)."""
        return []

    def graph_prepare(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The forward's inputs made from host data before a CUDA-graph capture (``graph_kwargs`` models)."""
        return args, kwargs

    # -- hooking ---------------------------------------------------------------------------------------
    def install(self, mp, run) -> None:
        """Route the units of the clone ``mp`` through ``run.engine`` (default: wrap their modules)."""
        self.install_modules(mp, run)
        run.hook_path = HookPath(self.supports, "module caching", restated=False)

    def install_modules(self, mp, run, blocks: set[str] | None = None, when: Callable[[], bool] | None = None) -> int:
        """Object-patch the ``forward`` of every unit's submodule (of ``blocks`` only, if given) so that it is
        computed or reused by the engine (only while ``when()`` holds, if given); another node's patch of that
        forward is kept and runs inside. Returns how many units were patched."""
        n = 0
        for i, u in enumerate(self.units()):
            if blocks is not None and u.block not in blocks:
                continue
            if u.path is None:
                raise SelfCheckError(
                    f"ECAD: {self.kind}: unit {u.block}/{u.component} is computed by no single module, so it "
                    "cannot be cached at module level"
                )
            key = f"diffusion_model.{u.path}.forward"
            inner = getattr(mp, "object_patches", {}).get(key)
            module = self.dm.get_submodule(u.path)
            mp.add_object_patch(
                key, unit_forward(module, run, i, None if inner is None or is_ecad_patch(inner) else inner, when)
            )
            n += 1
        return n

    def install_block_reuse(self, mp, run) -> None:
        """ComfyUI's dit block hooks for every block: a block computes or reuses its residual as one unit."""
        for b in self.block_points():
            mp.set_model_patch_replace(block_reuse_patch(run, b.first_unit), "dit", b.point, b.index)

    def install_fallback(self, mp, run, label: str, why: str) -> HookPath:
        """What runs when the family's re-statement cannot (``why``): module caching where every unit is a module,
        else block reuse where ComfyUI offers block hooks, else no cache; logged once. Returns the path taken."""
        if all(u.path is not None and _has_module(self.dm, u.path) for u in self.units()):
            self.install_modules(mp, run)
            path = HookPath(label, "module caching")
        elif self.block_points():
            self.install_block_reuse(mp, run)
            path = HookPath(label, "block-level reuse (ComfyUI's dit block hooks)")
        else:
            run.engine.enabled = False
            path = HookPath(label, "no cache")
        path.switch_off(why)
        return path

    def compute_cost(self, steps: int, height: int, width: int, text_tokens: int | None) -> ComputeCost:
        """The search's compute objective: analytic MACs of the loaded model when the cost model covers it
        (numbers read from the module, so a fine-tune or pruned variant is costed as it is), else uniform."""
        why = None
        try:
            arch = self.arch(self.arch_hint or "comfy-model")
            if arch is not None:
                return macs_cost(self.layout, steps, arch, height, width, text_tokens=text_tokens)
            why = f"no analytic cost model for {type(self.dm).__name__}"
        except (AttributeError, TypeError, ValueError, IndexError) as e:
            why = f"cannot read the architecture of {type(self.dm).__name__} ({e})"
        log.info("ECAD search: %s; every unit costs the same", why)
        c = uniform_cost(self.layout, steps)
        return ComputeCost(c.unit, c.fixed, source="uniform", info={"why": why})


def _has_module(dm: torch.nn.Module, path: str) -> bool:
    try:
        dm.get_submodule(path)
    except AttributeError:
        return False
    return True


def unit_forward(module: torch.nn.Module, run, unit: int, inner=None, when: Callable[[], bool] | None = None):
    """A ``forward`` for ``module`` that the engine computes or serves from the cache as ``unit`` (while ``when()``
    holds, if given; else it just runs). ``inner``: what computes the module (default: its class's forward)."""
    compute = inner if inner is not None else type(module).forward.__get__(module)
    engine = run.engine

    if when is None:

        def forward(*args, **kwargs):
            return engine.call(unit, compute, args, kwargs)

    else:

        def forward(*args, **kwargs):
            if when():
                return engine.call(unit, compute, args, kwargs)
            return compute(*args, **kwargs)

    return mark(outside_compile(forward))


def block_reuse_patch(run, unit: int):
    """A dit block patch that computes the block, or adds its cached residual (output minus input) to the
    input, as ``unit``."""

    def patch(args, extra):
        eng = run.engine
        if not eng.active_for():
            return extra["original_block"](args)
        keys = [k for k in ("img", "txt") if isinstance(args.get(k), torch.Tensor)]
        sig = signature(*(args[k] for k in keys))
        res = eng.fetch(unit, sig) if eng.wants_reuse(unit) else None
        if res is not None:
            out = {}
            for k, r in res.items():
                out[k] = None if r is None else args[k] + r
            return out
        if not eng.keeps(unit):  # no later call reuses it: no input copy, no residual (all-recompute costs nothing)
            out = extra["original_block"](args)
            eng.store(unit, sig, None)  # counted as computed; nothing is kept
            return out
        inputs = {k: args[k].clone() for k in keys}  # blocks may update their inputs in place
        out = extra["original_block"](args)
        res = {}
        for k, v in out.items():
            if v is None:
                res[k] = None
            elif k in inputs and v.shape == inputs[k].shape:
                res[k] = v - inputs[k]
            else:
                raise SelfCheckError(
                    f"ECAD: block output {k!r} cannot be expressed as a residual of its input "
                    f"(shape {tuple(v.shape)}); block caching is not supported for this model"
                )
        eng.store(unit, sig, res)
        return out

    return mark(outside_compile(patch))


class HookPath:
    """Which path one patched model's family runs on, shared by its re-statements: the block re-statement until a
    check fails, then the fallback (``off`` says why); one warning per model."""

    def __init__(self, label: str, fallback: str, restated: bool = True):
        self.label, self.fallback, self.restated = label, fallback, restated
        self.off: str | None = None

    def describe(self) -> str:
        if not self.restated:
            return f"{self.label}: {self.fallback}"
        if self.off is None:
            return f"{self.label}: block re-statement (checked against ComfyUI's block at each new call shape)"
        return f"{self.label}: {self.fallback} (block re-statement off: {self.off})"

    def switch_off(self, why: str) -> None:
        if self.off is None:
            self.off = why
            log.warning(
                "ECAD: %s on ComfyUI %s: %s (block re-statement off: %s)",
                self.label,
                comfy_version(),
                self.fallback,
                why,
            )


class Restatement:
    """A block's forward re-stated on ComfyUI so that a reused unit's input is never built; the counterpart of
    the diffusers ``BlockHook``. Subclasses give ``unfit`` (why a block is not the configuration the
    re-statement covers; None: it is), ``restated`` (the block with its units through the engine) and
    ``check`` (the re-statement against ComfyUI's own block; SelfCheckError saying what differs)."""

    def __init__(self, dm: torch.nn.Module, run, path: HookPath):
        self.dm, self.run, self.path = dm, run, path

    @classmethod
    def unfit(cls, block: torch.nn.Module) -> str | None:
        return None

    def guarded(
        self,
        block: torch.nn.Module,
        original: Callable[..., Any],
        body: Callable[..., Any],
        check: Callable[..., None],
        fallback: Callable[..., Any],
    ):
        """The patch that runs ``block``: ``original`` while the engine is off, else ``body``; before ``body``,
        ``check`` with the same arguments, once per process for each call shape (``call_key`` of the arguments:
        a mismatch can be data-dependent, so every block is checked). A failed check (or a re-statement that
        raises) switches the model to ``fallback``, which then serves this call and every later one."""
        run, path, own = self.run, self.path, type(block).forward

        def patch(*args, **kwargs):
            if not run.engine.active_for():
                return original(*args, **kwargs)
            if path.off is None:
                try:
                    check_once(block, type(self), own, call_key((args, kwargs)), lambda: check(*args, **kwargs))
                except SelfCheckError as e:
                    path.switch_off(str(e))
                except Exception as e:  # noqa: BLE001 - a re-statement that no longer fits the block: fall back
                    path.switch_off(f"{self.where(block)}: the re-statement raised {type(e).__name__}: {e}")
                else:
                    return body(*args, **kwargs)
            return fallback(*args, **kwargs)

        return mark(outside_compile(patch))

    def where(self, blk) -> str:
        """The block's path in the diffusion model, for messages."""
        for name, m in self.dm.named_modules():
            if m is blk:
                return name
        return type(blk).__name__
