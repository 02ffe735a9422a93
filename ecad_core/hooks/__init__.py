"""Hooks that route a model's units through the engine (the diffusers ``hooks/`` pattern).

One hook class per job, attached to a module instance and removed cleanly:
attaching sets an instance attribute ``forward``; detaching deletes it, so the
module is exactly as it was.

* ``UnitHook`` (``unit.py``): wraps a component module's own forward (nothing re-stated).
* ``BlockHook`` (``base.py``): the base of block re-statements, which build a unit's input only when that unit
  computes and are checked bit for bit against the block's own forward at each block's first call (once per
  process per device and dtype, ``check_once``; the ComfyUI re-statements once per call shape, ``call_key``).
  The re-statements themselves belong to their family's diffusers adapter
  (``ecad_core/diffusers/adapters/pixart.py``: ``PixArtBlockHook``; ``flux.py``: ``FluxDoubleBlockHook``,
  ``FluxSingleBlockHook``).
"""

from .base import BlockHook, call_key, check_once, forget_verified, has_hook, missing_attr, restatement_mismatch
from .unit import UnitHook

__all__ = [
    "BlockHook",
    "UnitHook",
    "call_key",
    "check_once",
    "forget_verified",
    "has_hook",
    "missing_attr",
    "restatement_mismatch",
]
