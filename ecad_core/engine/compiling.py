"""torch.compile and the cache: ECAD's hooked blocks run outside compiled graphs.

A unit's compute-or-reuse decision reads the sampling step, which changes at
every call. Traced by torch.compile, it becomes a guard: the compiled graph is
recompiled for every step and every block until torch.compile gives up at its
recompile limit (minutes of compiling, then eager anyway). So every entry point
of the cache (block patches, unit hooks, the step tracker) is wrapped by
``outside_compile``: in eager mode it calls the function as it is; while
torch.compile traces, it makes a graph break and runs the function eagerly.
The rest of a compiled model (embedders, final layer, anything between the
blocks) stays compiled, and compiling happens once, not per step.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger("ecad")
_told = False
FULLGRAPH_REASON = (
    "ECAD's cache decides at every step whether a unit runs, so its hooked blocks run outside "
    "compiled graphs: compile with fullgraph=False (ComfyUI's TorchCompileModel does), or compile "
    "the model without ECAD"
)


def outside_compile(fn):
    """``fn``, kept out of torch.compile's graphs (a graph break around each call while compiling)."""

    def eager(*args, **kwargs):
        _tell()
        return fn(*args, **kwargs)

    try:  # the reason is printed by torch.compile(fullgraph=True), which cannot include these calls
        disabled = torch.compiler.disable(eager, reason=FULLGRAPH_REASON)
    except TypeError:  # torch before 2.8: no reason argument
        disabled = torch.compiler.disable(eager)
    is_compiling = torch.compiler.is_compiling

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if is_compiling():
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)

    return call


def _tell() -> None:
    global _told
    if not _told:
        _told = True
        log.info(
            "ECAD: this model is compiled (torch.compile / TorchCompileModel): ECAD's cached blocks run "
            "outside the compiled graphs (their per-step cache decisions would make torch.compile recompile "
            "at every step); the rest of the model stays compiled"
        )
