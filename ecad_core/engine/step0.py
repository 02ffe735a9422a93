"""Step-0 sharing for a search's runs: ``Step0Memo``.

Step 0 always computes, and every candidate of a search samples the same calibration batches from the same noise,
so each run's step-0 model calls get the same inputs and give the same outputs. A ``Step0Memo``, owned by a
search's ``generate`` function and shared by all its runs, keeps per step-0 model call (one per calibration batch
and branch) its inputs, its output and every unit's output with the signature the engine stores it under. The
first run of a batch records them (its engine keeps every unit's step-0 output for the copy, then drops what its
schedule would not have kept); a later run whose step-0 call has *exactly* the stored inputs (the same tensors,
torch.equal, the same shapes, dtypes, devices; the same plain values; the same other objects) does not run the
model: it gets a clone of the stored output, and its engine gets the stored unit outputs it keeps for step 1 and
counts every unit as computed at step 0, as the model call would have. Anything else (a racing subset's smaller
batch, another seed) runs normally and is recorded as another entry.

Not used while a unit timer or the unit probe watches the engine (they must see the units run), nor in CUDA-graph
mode. Memory: one step-0 output per unit per recorded call (plus its inputs and the model's output), on the
device they were computed on, until the memo is dropped or ``clear()``-ed; ``max_bytes`` caps it (calls beyond
it run normally). Host-independent: a host routes its step-0 model calls through ``call``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .engine import CacheEngine, _tree_map, tree_nbytes

log = logging.getLogger("ecad")

_SCALARS = (int, float, str, bool, bytes, type(None), torch.dtype, torch.device)


def _sig(x) -> Any:
    """A hashable key of an input structure: tensors by (shape, dtype, device), plain values by value, other
    objects by identity."""
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), x.dtype, x.device)
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, tuple(_sig(v) for v in x))
    if isinstance(x, dict):
        return ("D", tuple((k, _sig(v)) for k, v in x.items()))
    if isinstance(x, _SCALARS):
        return ("V", type(x).__name__, x)
    return ("O", id(x))


def _equal(a, b) -> bool:
    """``b`` (a call's inputs) is exactly ``a`` (stored inputs of the same ``_sig``)."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return all(_equal(v, b[k]) for k, v in a.items())
    return a is b or (isinstance(a, _SCALARS) and a == b)


def _clonable(x) -> bool:
    """Outputs a clone reproduces with their type: tensors in plain tuples, lists and dicts."""
    if isinstance(x, torch.Tensor):
        return True
    if type(x) in (tuple, list):
        return all(_clonable(v) for v in x)
    if type(x) is dict:
        return all(_clonable(v) for v in x.values())
    return False


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if type(x) in (tuple, list):
        return type(x)(_clone(v) for v in x)
    if type(x) is dict:
        return {k: _clone(v) for k, v in x.items()}
    return x


@dataclass
class _Entry:
    inputs: Any
    output: Any
    units: list  # [(unit, engine signature, output)] in the order they were computed
    nbytes: int


class Step0Memo:
    """Step-0 model calls shared between the runs of one search (see the module doc).

    ``enabled=False`` turns it off (every call runs the model). ``max_bytes``: no new entry once the memo holds
    this many bytes (None: no cap). Counters: ``shared`` (step-0 model calls served from the memo), ``recorded``
    (entries made), ``computed`` (step-0 model calls that ran while the memo was in use).
    """

    @classmethod
    def for_search(cls, device) -> Step0Memo:
        """A search's memo on ``device`` (its ``generate`` functions make one), capped at ``default_max_bytes``."""
        return cls(max_bytes=default_max_bytes(device))

    def __init__(self, *, enabled: bool = True, max_bytes: int | None = None):
        self.enabled = enabled
        self.max_bytes = max_bytes
        self._entries: dict[Any, list[_Entry]] = {}
        self.nbytes = 0
        self.shared = 0
        self.recorded = 0
        self.computed = 0
        self.full = False  # an entry did not fit in max_bytes: nothing more is recorded (no clones for nothing)

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def usable(self, engine: CacheEngine) -> bool:
        """Whether ``engine``'s current model call may be served or recorded: step 0 of a run, no unit timer
        or probe watching, not in CUDA-graph mode."""
        return (
            self.enabled
            and engine.active_for()
            and engine.step == 0
            and not engine.keep_store
            and engine.timer_in_use is None
        )

    def call(self, engine: CacheEngine, compute: Callable[[], Any], inputs: Any):
        """The output of the model call ``compute()`` at ``engine``'s current position; ``inputs``: everything the
        call's output depends on (the host's args and kwargs), compared exactly with the stored calls'."""
        if not self.usable(engine):
            return compute()
        key = _sig(inputs)
        for e in self._entries.get(key, ()):
            if _equal(e.inputs, inputs):
                return self._serve(engine, e)
        if self.full:
            self.computed += 1
            return compute()
        return self._record(engine, key, compute, inputs)

    def _serve(self, engine: CacheEngine, e: _Entry):
        for unit, sig, out in e.units:
            # counted computed, kept (a clone: the memo's copy stays as recorded) only where the schedule keeps it
            engine.store(unit, sig, _clone(out) if engine.keeps(unit) else out)
        self.shared += 1
        return _clone(e.output)

    def _record(self, engine: CacheEngine, key, compute: Callable[[], Any], inputs):
        self.computed += 1
        step = engine.step
        before = engine.n_computed[step], engine.n_reused[step], engine.n_fallback[step]
        # the inputs with their tensors cloned (the host may change them in place later); other objects kept
        inputs_copy = _tree_map(lambda t: t.detach().clone(), inputs)
        with engine.keeping_outputs() as got:
            out = compute()
        after = engine.n_computed[step], engine.n_reused[step], engine.n_fallback[step]
        if after[0] - before[0] != len(got) or after[1:] != before[1:] or not _clonable(out):
            # a unit computed twice, a reuse, or an output we cannot clone faithfully: not recorded
            log.debug(
                "ECAD step-0 memo: call not recorded (%d units stored, %d counted)", len(got), after[0] - before[0]
            )
            return out
        units = [(u, sig, _clone(o)) for u, (sig, o) in got.items()]
        entry = _Entry(inputs_copy, _clone(out), units, 0)
        entry.nbytes = tree_nbytes(entry.output) + tree_nbytes([o for _, _, o in units]) + tree_nbytes(inputs_copy)
        if self.max_bytes is not None and self.nbytes + entry.nbytes > self.max_bytes:
            self.full = True
            log.info(
                "ECAD step-0 memo: a %.0f MiB entry does not fit in %.0f MiB (%.0f MiB held); step 0 of the other "
                "calibration batches runs as usual",
                entry.nbytes / 2**20,
                self.max_bytes / 2**20,
                self.nbytes / 2**20,
            )
            return out
        self._entries.setdefault(key, []).append(entry)
        self.nbytes += entry.nbytes
        self.recorded += 1
        return out


def default_max_bytes(device) -> int:
    """The memory a search's memo may hold by default: a quarter of a CUDA device's total memory (the entries live
    where they were computed), else 4 GiB."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory // 4
    return 4 * 2**30
