"""Hooks that route a model's units through the engine (the diffusers ``hooks/`` pattern).

One hook class per job, attached to a module instance and removed cleanly:
attaching sets an instance attribute ``forward``; detaching deletes it, so the
module is exactly as it was.

* ``UnitHook`` (``unit.py``): wraps a component module's own forward (nothing re-stated).
* Block re-statements, which build a unit's input only when that unit computes
  and are checked bit for bit against the block's own forward at each block's
  first call (once per process per device and dtype, ``base.check_once``):
  ``PixArtBlockHook`` (``pixart.py``), ``FluxDoubleBlockHook`` and
  ``FluxSingleBlockHook`` (``flux.py``). ``BLOCK_HOOKS`` maps the block kinds
  of ``adapters.UnitMap.blocks`` to them.
"""

from .base import check_once, forget_verified, has_hook, restatement_mismatch
from .flux import FluxDoubleBlockHook, FluxSingleBlockHook
from .pixart import PixArtBlockHook
from .unit import UnitHook

BLOCK_HOOKS = {"pixart": PixArtBlockHook, "flux_double": FluxDoubleBlockHook, "flux_single": FluxSingleBlockHook}

__all__ = [
    "BLOCK_HOOKS",
    "FluxDoubleBlockHook",
    "FluxSingleBlockHook",
    "PixArtBlockHook",
    "UnitHook",
    "check_once",
    "forget_verified",
    "has_hook",
    "restatement_mismatch",
]
