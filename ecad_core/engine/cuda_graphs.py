"""CUDA-graph mode for the diffusers path: one captured graph per schedule row, replayed.

A static schedule fixes which units run at each step, so the transformer's
forward at a step is the same sequence of kernels every time that step's row
(and the input shapes, and the CFG branch) recurs. Each distinct
(row, branch, input signature) is captured once as a CUDA graph and replayed
afterwards: no Python, no per-kernel launch cost. Small models at low
resolution are launch-bound in eager PyTorch, so this is where most of their
time goes.

How the cache fits: in this mode the engine keeps its stored outputs as static
buffers (``CacheEngine.keep_store``). A compute unit inside a graph copies its
fresh output into its buffer; a reuse unit reads the buffer. Buffers live
outside the graphs' memory pool and persist across runs, so every graph sees
the values the previous step wrote, whichever graph wrote them. The kernels are
the eager ones, so the output equals eager execution.

When capture is impossible the transformer runs eagerly (the plain engine) and
``GraphMode.reason`` says why, also in the log: no CUDA device, cache offload
(copies between devices), accelerate offload hooks, a capture error (an
operation that synchronises with the host, say), or dynamic shapes (more
distinct signatures than ``max_graphs``). The first call at a new input
signature and any call whose reused outputs were not written in the current
run (a branch first seen mid-run) also run eagerly; they are counted.

Hosts that load weights only when sampling starts (ComfyUI) create the mode
with ``defer_checks=True``: the checks then run at the first call of every
sampling run (``run_check`` adds the host's own), a failing check makes that
run eager, and graphs captured against weights that have since moved (other
storage, as after a LoRA re-patch) are dropped and captured again, never
replayed against stale memory.
"""

from __future__ import annotations

import logging

import torch
from torch.utils import _pytree as pytree

from .compiling import outside_compile

log = logging.getLogger("ecad")


def unsupported_reason(transformer: torch.nn.Module, engine) -> str | None:
    """Why graphs cannot be used for this model and engine (None if they can)."""
    if not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device and this PyTorch has none; running eagerly"
    p = next(transformer.parameters(), None)
    if p is None or p.device.type != "cuda":
        dev = "no parameters" if p is None else p.device
        return f"CUDA graphs need the model on a CUDA device (it is on {dev}); running eagerly"
    if engine.offload_device is not None:
        return (
            f"the cache is offloaded to {engine.offload_device}: per-step copies between devices cannot be "
            f"captured in a graph; running eagerly"
        )
    if any(hasattr(m, "_hf_hook") for m in transformer.modules()):
        return "the model has accelerate offload hooks (weights move during the forward); running eagerly"
    return None


class _Graph:
    __slots__ = ("compute_units", "graph", "n_compute", "static_inputs", "static_out")

    def __init__(self, graph, static_inputs, static_out, compute_units):
        self.graph = graph
        self.static_inputs = static_inputs
        self.static_out = static_out
        self.compute_units = compute_units
        self.n_compute = len(compute_units)


class GraphMode:
    """Captures and replays the transformer's forward of an ``EcadHandle`` (see the module doc)."""

    def __init__(
        self,
        transformer: torch.nn.Module,
        engine,
        max_graphs: int = 64,
        *,
        original=None,
        key_kwargs: tuple | None = None,
        defer_checks: bool = False,
        run_check=None,
        prepare=None,
    ):
        """``original``: the callable to run and capture (default: the transformer's forward, which is then
        replaced by ``self.forward``; with ``original`` the caller installs ``self.forward`` itself).
        ``key_kwargs``: only these keyword arguments are graph inputs; the others are passed through to
        eager and captured calls and ignored by replays (only for models whose forward ignores them)."""
        self.transformer = transformer
        self.engine = engine
        # one function for the life of the mode (installed as the model's forward, compared on detach); kept out
        # of torch.compile's graphs: a captured CUDA graph replaces what compiling would give
        self.forward = outside_compile(self._forward)
        self.max_graphs = int(max_graphs)
        self.key_kwargs = None if key_kwargs is None else tuple(key_kwargs)
        self.defer_checks = defer_checks
        self.run_check = run_check
        self.prepare = prepare
        self.graphs: dict = {}
        self.warm: set = set()
        self.replays = 0
        self.captures = 0
        self.eager_calls = 0
        self.recaptures = 0
        self.run_reason: str | None = None  # why the current run is eager (deferred checks)
        self._run_seen = None
        self._weights: tuple | None = None
        if defer_checks:
            self.reason = (
                None
                if torch.cuda.is_available()
                else "CUDA graphs need a CUDA device and this PyTorch has none; running eagerly"
            )
        else:
            self.reason = unsupported_reason(transformer, engine)
        self._original = None
        self._pool = None
        if self.reason is not None:
            log.warning("ECAD CUDA graphs off: %s", self.reason)
            return
        self._pool = torch.cuda.graph_pool_handle()
        engine.keep_store = True
        if original is None:
            self._original = transformer.forward
            transformer.forward = self.forward
        else:
            self._original = original

    @property
    def active(self) -> bool:
        return self.reason is None

    def _disable(self, reason: str) -> None:
        self.reason = reason
        self.graphs.clear()
        log.warning("ECAD CUDA graphs off: %s", reason)

    def detach(self) -> None:
        """Restore the transformer's own forward (if this mode replaced it) and free the graphs."""
        if self._original is not None and self.transformer.__dict__.get("forward") == self.forward:
            del self.transformer.forward
        self._original = None
        self.graphs.clear()
        self.engine.keep_store = False
        self.engine.clear()

    def status(self) -> dict:
        return {
            "active": self.active,
            "reason": self.reason or self.run_reason,
            "graphs": len(self.graphs),
            "captures": self.captures,
            "replays": self.replays,
            "eager_calls": self.eager_calls,
            "recaptures": self.recaptures,
        }

    def _weights_key(self) -> tuple:
        return tuple(t.data_ptr() for t in self.transformer.parameters()) + tuple(
            t.data_ptr() for t in self.transformer.buffers()
        )

    def _start_run(self) -> None:
        """Deferred checks, once per sampling run."""
        eng = self.engine
        self._run_seen = eng.run_id
        reason = unsupported_reason(self.transformer, eng)
        if reason is None and self.run_check is not None:
            reason = self.run_check()
        if reason != self.run_reason and reason is not None:
            log.warning("ECAD CUDA graphs off for this run: %s", reason)
        self.run_reason = reason
        if reason is not None:
            return
        key = self._weights_key()
        if key != self._weights:
            if self.graphs:  # captured against other weight storage: never replay those
                log.info("ECAD CUDA graphs: the model's weights moved since capture; capturing again")
                self.recaptures += 1
            self.graphs.clear()
            self.warm.clear()
            # a fresh memory pool: capturing into the pool of freed graphs trips the caching allocator
            self._pool = torch.cuda.graph_pool_handle()
            self._weights = key

    # -- the forward ---------------------------------------------------------
    def _forward(self, *args, **kwargs):
        eng = self.engine
        if self.reason is not None or not eng.active_for():
            self.eager_calls += 1
            return self._original(*args, **kwargs)
        if self.defer_checks and self._run_seen != eng.run_id:
            self._start_run()
        if self.run_reason is not None:
            self.eager_calls += 1
            return self._original(*args, **kwargs)
        if self.prepare is not None:
            args, kwargs = self.prepare(args, kwargs)
        passed = {}
        if self.key_kwargs is not None:
            passed = {k: v for k, v in kwargs.items() if k not in self.key_kwargs}
            kwargs = {k: v for k, v in kwargs.items() if k in self.key_kwargs}
        leaves, spec = pytree.tree_flatten((args, kwargs))
        sig = tuple((t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else _hashable(t) for t in leaves)
        step, branch = eng.step, eng.branch
        row = eng._bits[step] if step > 0 else None
        key = (bytes(row) if row is not None else b"all", branch, sig, str(spec))
        g = self.graphs.get(key)
        if g is None:
            if (branch, sig) not in self.warm or not self._reuse_ready(row, branch):
                return self._eager_warm(branch, sig, args, {**kwargs, **passed})
            if len(self.graphs) >= self.max_graphs:
                self._disable(
                    f"dynamic shapes: more than {self.max_graphs} graphs were needed (input shapes, "
                    f"non-tensor arguments or the schedule's rows vary too much); running eagerly "
                    f"from here"
                )
                self.eager_calls += 1
                return self._original(*args, **kwargs, **passed)
            g = self._capture(key, leaves, spec, row, passed)
            if g is None:
                self.eager_calls += 1
                return self._original(*args, **kwargs, **passed)
        elif not self._reuse_ready(row, branch):
            self.eager_calls += 1
            return self._original(*args, **kwargs, **passed)
        for s, t in zip(g.static_inputs, leaves):
            if s is not None and s.data_ptr() != t.data_ptr():
                s.copy_(t)
        g.graph.replay()
        self.replays += 1
        eng.n_computed[step] += g.n_compute
        eng.n_reused[step] += len(eng._bits[0]) - g.n_compute
        eng._fresh.update((u, branch) for u in g.compute_units)
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, g.static_out)

    def _reuse_ready(self, row, branch) -> bool:
        """Every unit this row reuses was written in this run (else the eager engine decides)."""
        if row is None:
            return True
        fresh = self.engine._fresh
        return all(bit or (u, branch) in fresh for u, bit in enumerate(row))

    def _eager_warm(self, branch, sig, args, kwargs):
        # First call at a signature: eager on a side stream (lazy library set-up must not be captured);
        # it also allocates the cache buffers outside the graph pool.
        self.eager_calls += 1
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            out = self._original(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(s)
        self.warm.add((branch, sig))
        return out

    def _capture(self, key, leaves, spec, row, passed=None):
        eng = self.engine
        static_inputs = [t.clone() if isinstance(t, torch.Tensor) else None for t in leaves]
        sargs, skwargs = pytree.tree_unflatten([s if s is not None else t for s, t in zip(static_inputs, leaves)], spec)
        n_units = len(eng._bits[0])
        compute = [u for u in range(n_units) if row is None or row[u]]
        # capture executes nothing: only replays count, so the counters are restored afterwards
        saved = (list(eng.n_computed), list(eng.n_reused), list(eng.n_fallback))
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._original(*sargs, **skwargs, **(passed or {}))
        except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly, say why
            self._disable(f"capture failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); running eagerly")
            return None
        finally:
            eng.n_computed[:], eng.n_reused[:], eng.n_fallback[:] = saved
        self.captures += 1
        g = _Graph(graph, static_inputs, out, compute)
        self.graphs[key] = g
        return g


def _hashable(x):
    try:
        hash(x)
        return x
    except TypeError:
        return ("unhashable", type(x).__name__, id(x))
