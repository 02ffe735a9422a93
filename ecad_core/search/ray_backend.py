"""Ray evaluation backend: one search's candidates scored in parallel on many GPUs and machines.

``RayEvaluator`` plugs into ``run_search`` like ``LocalEvaluator`` does. It
starts Ray actors ("workers"), each building its own evaluator from a
picklable ``factory`` (for example ``EvolveSpec`` from the evolve CLI), so
each worker holds one loaded pipeline. The factory must return a
``LocalEvaluator``, or any evaluator with ``evaluate`` (and optionally
``prepare``).

* References: the full-compute outputs are computed once, on one worker, put
  in Ray's object store and handed to every worker (``LocalEvaluator``
  factories). The driver keeps them in ``references.pt`` in the search folder,
  in ``LocalEvaluator``'s format, so a resume does not recompute them.
* A generation's candidates are dispatched one schedule per task to whichever
  worker is free, and the losses are returned in the order of the schedules.
* A worker that is lost (process killed, node gone, out of memory) is replaced
  by a new one, and its candidate is run again on another worker. A candidate
  that loses its worker ``max_attempts`` times stops the search with an error.
* Workers write nothing. The driver's checkpoint stays the only record of the
  search.

``describe()`` returns the workers' evaluator description unchanged: the
backend does not change the losses (same generation code, same float math),
so a search can move between the local and the Ray backend and resume from the
same checkpoint.

Ray is optional. It is imported only when a ``RayEvaluator`` is created, and
a missing Ray raises ``SearchSettingsError`` that names the extra to install.
"""

from __future__ import annotations

import collections
import logging
import math
import time
import typing
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import EvaluationError, SearchSettingsError
from .evaluate import REFERENCE_FILE, LocalEvaluator, Progress

log = logging.getLogger("ecad.search")

RAY_MISSING = (
    "the Ray backend needs the 'ray' package, which is not installed: "
    "pip install 'comfyui-ecad[ray]' (or pip install 'ray[default]') on this machine and on every "
    "node of the cluster"
)


def import_ray():
    """The ``ray`` module, or a ``SearchSettingsError`` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise SearchSettingsError(RAY_MISSING) from None
    return ray


def _lost_errors(ray) -> tuple:
    """Ray errors that mean a worker is gone (its task can run again elsewhere), not that the task failed."""
    ex = ray.exceptions
    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ActorUnschedulableError")
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))


def _raise_cause(err, what: str):
    """Raise the worker's own exception (what the local backend would raise); the remote trace goes to the log."""
    log.error("ECAD search: %s:\n%s", what, err)
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        raise cause from None
    raise err


class _EvalWorker:
    """The body of one Ray actor: an evaluator built by the factory, scoring one schedule per call."""

    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory
        self.ev: Any = None

    def setup(self, references=None, fingerprint=None) -> dict:
        """Build the evaluator (loads the pipeline; once) and install the shared references."""
        if self.ev is None:
            self.ev = self.factory()
            if not callable(getattr(self.ev, "evaluate", None)):
                raise SearchSettingsError(
                    f"the Ray worker factory returned {type(self.ev).__name__}, which has no evaluate(schedules) method"
                )
        if references is not None and isinstance(self.ev, LocalEvaluator):
            outs, scores = references
            # the shared references replace this worker's own full-compute run
            self.ev._refs, self.ev._ref_scores = list(outs), scores
        elif (
            references is None
            and fingerprint is not None
            and not isinstance(self.ev, LocalEvaluator)
            and callable(getattr(self.ev, "prepare", None))
        ):
            self.ev.prepare(None, fingerprint, None)
        return self.info()

    def info(self) -> dict:
        import os
        import socket

        import ray

        ctx = ray.get_runtime_context()
        describe = self.ev.describe() if callable(getattr(self.ev, "describe", None)) else {}
        return {
            "name": ctx.get_actor_name(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "describe": describe,
            "shares_references": isinstance(self.ev, LocalEvaluator),
        }

    def references(self):
        """The full-compute outputs (comparison-ready) and, for learned metrics, their scores."""
        outs = self.ev.references()
        return list(outs), self.ev._ref_scores

    def evaluate(self, schedule) -> float:
        losses = self.ev.evaluate([schedule])
        if len(losses) != 1:
            raise EvaluationError(f"the worker's evaluator returned {len(losses)} losses for one schedule")
        return float(losses[0])

    def call(self, fn):
        return fn(self.ev)


class _Handle:
    """Driver-side record of one worker."""

    def __init__(self, actor, name: str):
        self.actor = actor
        self.name = name
        self.info: dict = {}

    def where(self) -> str:
        host = self.info.get("host")
        return f"{self.name} on {host}" if host else self.name


class RayEvaluator:
    """Scores schedules on Ray workers; see the module docstring.

    ``factory``: picklable, no arguments, run once on every worker; returns the
    worker's evaluator (``LocalEvaluator`` to share references). ``address``:
    ``auto`` (a cluster already running on this machine or named by
    ``RAY_ADDRESS``, else a new local one), ``local`` (always a new local one),
    or a cluster address (``HOST:PORT``, ``ray://HOST:10001``). An already
    initialised Ray is used as it is. ``workers``: number of workers (default:
    as many as the cluster's GPUs allow, or its CPUs without GPUs).
    ``gpus_per_worker``: default 1 when the cluster has GPUs, else 0
    (fractions put several workers on one GPU). ``batch_size``: schedules per
    ``evaluate`` call (None: a whole generation, which keeps every worker busy).
    ``max_attempts``: how often one schedule may lose its worker before the
    search stops. ``start_timeout_s``: how long to wait for a worker to start
    when none is running (a cluster without room for a replacement).
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        address: str | None = "auto",
        workers: int | None = None,
        gpus_per_worker: float | None = None,
        cpus_per_worker: float = 1.0,
        batch_size: int | None = None,
        max_attempts: int = 3,
        start_timeout_s: float = 900.0,
        init_kwargs: dict | None = None,
    ):
        self._ray = import_ray()
        if not callable(factory):
            raise SearchSettingsError("the Ray worker factory must be callable: factory() -> evaluator")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise SearchSettingsError(f"Ray workers must be an integer >= 1, got {workers!r}")
        for what, v in (("GPUs per worker", gpus_per_worker), ("CPUs per worker", cpus_per_worker)):
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
            ):
                raise SearchSettingsError(f"Ray {what} must be a number >= 0, got {v!r}")
        if (
            isinstance(gpus_per_worker, (int, float))
            and gpus_per_worker > 1
            and gpus_per_worker != int(gpus_per_worker)
        ):
            raise SearchSettingsError(f"Ray GPUs per worker above 1 must be whole GPUs, got {gpus_per_worker!r}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise SearchSettingsError(f"batch size must be a positive integer or None, got {batch_size!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise SearchSettingsError(f"max attempts must be an integer >= 1, got {max_attempts!r}")
        self.factory = factory
        self.address = address
        self.requested_workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = float(cpus_per_worker)
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.start_timeout_s = float(start_timeout_s)
        self.init_kwargs = dict(init_kwargs or {})
        self.lost_workers = 0  # workers lost (and replaced) over this evaluator's life
        self.reruns = 0  # schedules run again because their worker was lost
        self.n_evaluated = 0  # schedules scored
        self.n_generate = 0  # sampling runs whose results were used: references + schedules
        self.seconds_evaluating = 0.0
        self._tag = uuid.uuid4().hex[:8]
        self._count = 0
        self._idle: list[_Handle] = []
        self._starting: dict = {}  # setup ObjectRef -> _Handle of a worker that is starting
        self._started = False
        self._owns_ray = False
        self._factory_ref = None
        self._refs_ref = None
        self._fingerprint: str | None = None
        self._prepared = False
        self._description: Any = None
        self._gpw = 0.0
        self._cls: Any = None

    # -- start-up ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect to (or start) Ray and start the workers; each loads its pipeline. Idempotent."""
        if self._started:
            return
        ray = self._ray
        if not ray.is_initialized():
            addr = None if self.address in (None, "", "auto") else self.address
            try:
                ray.init(address=addr, **self.init_kwargs)
            except (OSError, ValueError, RuntimeError) as e:  # ConnectionError and TimeoutError are OSErrors
                raise SearchSettingsError(f"cannot connect to the Ray cluster at {self.address!r}: {e}") from None
            self._owns_ray = True
        else:
            log.info("ECAD search: using the Ray instance this process is already connected to")
        try:
            self._start_workers()
        except BaseException:
            self.close()
            raise
        self._started = True

    def _start_workers(self) -> None:
        ray = self._ray
        res = ray.cluster_resources()
        total_gpus, total_cpus = float(res.get("GPU", 0.0)), float(res.get("CPU", 0.0))
        gpw = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if total_gpus >= 1 else 0.0)
        cpw = self.cpus_per_worker
        n = self.requested_workers
        if n is None:
            n = int(total_gpus // gpw) if gpw > 0 else (int(total_cpus // cpw) if cpw > 0 else 1)
            n = max(n, 1)
        if gpw * n > total_gpus + 1e-9 or cpw * n > total_cpus + 1e-9:
            raise SearchSettingsError(
                f"{n} Ray worker(s) x ({gpw:g} GPU, {cpw:g} CPU) do not fit the Ray cluster, which has "
                f"{total_gpus:g} GPU(s) and {total_cpus:g} CPU(s); ask for fewer workers or resources per worker"
            )
        self._gpw = gpw
        self._factory_ref = ray.put(self.factory)
        handles = [self._spawn() for _ in range(n)]
        log.info(
            "ECAD search: starting %d Ray worker(s) (%g GPU, %g CPU each; cluster: %g GPU, %g CPU)",
            n,
            gpw,
            cpw,
            total_gpus,
            total_cpus,
        )
        # every worker loads its pipeline at the same time; the search waits for all of them
        for ref, h in list(self._starting.items()):
            try:
                h.info = ray.get(ref)
            except _lost_errors(ray) as e:
                raise EvaluationError(
                    f"Ray worker {h.name} failed to start ({type(e).__name__}: {e}); is "
                    "comfyui-ecad installed on every node?"
                ) from None
            except ray.exceptions.RayTaskError as e:
                # the factory's own error (e.g. a model folder missing on that node)
                _raise_cause(e, f"Ray worker {h.name} could not build its evaluator")
            del self._starting[ref]
            self._idle.append(h)
        assert len(self._idle) == len(handles)
        self._description = dict(self._idle[0].info.get("describe") or {})
        for h in self._idle[1:]:
            if h.info.get("describe") != self._description:
                raise EvaluationError(
                    f"Ray workers {self._idle[0].where()} and {h.where()} describe different "
                    "evaluators; the factory must build the same evaluator everywhere"
                )
        log.info(
            "ECAD search: Ray workers ready: %s",
            ", ".join(f"{h.where()} (GPU {','.join(h.info.get('gpus') or []) or '-'})" for h in self._idle),
        )

    def _spawn(self, references=None) -> _Handle:
        """Start a worker; its setup call is in ``_starting`` until it answers."""
        ray = self._ray
        name = f"ecad-eval-{self._tag}-{self._count}"
        self._count += 1
        if self._cls is None:
            self._cls = ray.remote(_EvalWorker)
        actor = self._cls.options(
            name=name, num_gpus=self._gpw, num_cpus=self.cpus_per_worker, max_restarts=0, max_task_retries=0
        ).remote(self._factory_ref)
        h = _Handle(actor, name)
        self._starting[actor.setup.remote(references, self._fingerprint)] = h
        return h

    # -- the Evaluator protocol --------------------------------------------------------
    def describe(self) -> dict:
        self.start()
        return dict(self._description)

    def prepare(
        self, out_dir: str | Path | None, fingerprint: str | None = None, progress: Progress | None = None
    ) -> None:
        """Share the references with every worker: from ``references.pt`` when it matches, else computed once."""
        self.start()
        ray = self._ray
        self._fingerprint = fingerprint
        worker = self._idle[0]
        if not worker.info.get("shares_references"):
            ray.get([h.actor.setup.remote(None, fingerprint) for h in self._idle])
            self._prepared = True
            return
        space = self._description.get("metric")
        path = Path(out_dir) / REFERENCE_FILE if out_dir is not None else None
        refs = None
        if path is not None and path.is_file():
            try:
                d = torch.load(path, map_location="cpu", weights_only=True)
                if d.get("fingerprint") == fingerprint and d.get("space") == space:
                    refs = (list(d["outputs"]), d.get("scores"))
                    log.info("ECAD search: reference outputs loaded from %s", path)
                else:
                    log.warning("ECAD search: %s belongs to other settings; recomputing", path)
            except Exception as e:  # noqa: BLE001 - a broken cache file is recomputed
                log.warning("ECAD search: cannot read %s (%s); recomputing", path, e)
        if refs is None:
            if progress:
                progress("reference", 0, 1)
            refs = self._on_any_worker("references", "computing the full-compute references")
            self.n_generate += 1
            if not refs[0]:
                raise EvaluationError("the references are empty: generate(None) returned no outputs")
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save({"fingerprint": fingerprint, "space": space, "outputs": refs[0], "scores": refs[1]}, tmp)
                tmp.replace(path)
            if progress:
                progress("reference", 1, 1)
        self._refs_ref = ray.put(refs)
        ray.get([h.actor.setup.remote(self._refs_ref, fingerprint) for h in self._idle])
        self._prepared = True

    def evaluate(self, schedules: list) -> list[float]:
        """The loss of each schedule, in order; schedules whose worker was lost are run again elsewhere."""
        if not self._prepared:
            self.prepare(None, None)
        ray = self._ray
        lost = _lost_errors(ray)
        t0 = time.perf_counter()
        n = len(schedules)
        results: list[float | None] = [None] * n
        attempts = [0] * n
        queue = collections.deque(range(n))
        running: dict = {}  # evaluate ObjectRef -> (_Handle, schedule index)
        idle = collections.deque(self._idle)
        self._idle = []
        done = 0
        try:
            while done < n:
                while queue and idle:
                    h, i = idle.popleft(), queue.popleft()
                    attempts[i] += 1
                    running[h.actor.evaluate.remote(schedules[i])] = (h, i)
                if not running and not self._starting:
                    raise EvaluationError("no Ray worker is left to evaluate on")
                # with work in flight, results will come; with only starting workers, a cluster
                # without room for a replacement would wait forever
                timeout = None if running else self.start_timeout_s
                ready, _ = ray.wait(list(running) + list(self._starting), num_returns=1, timeout=timeout)
                if not ready:
                    raise EvaluationError(
                        f"no Ray worker started within {self.start_timeout_s:g} s after workers "
                        "were lost; the cluster has no room for a replacement"
                    )
                ref = ready[0]
                if ref in self._starting:
                    h = self._starting.pop(ref)
                    try:
                        h.info = ray.get(ref)
                    except lost as e:
                        self._replace(h, e, None)
                        continue
                    log.info("ECAD search: replacement Ray worker %s ready", h.where())
                    idle.append(h)
                    continue
                h, i = running.pop(ref)
                try:
                    loss = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    _raise_cause(e, f"Ray worker {h.where()} failed on schedule {getattr(schedules[i], 'name', i)!r}")
                except lost as e:
                    name = getattr(schedules[i], "name", f"#{i}")
                    again = attempts[i] < self.max_attempts
                    self._replace(h, e, name if again else None)
                    if not again:
                        raise EvaluationError(
                            f"schedule {name!r} lost its Ray worker {attempts[i]} times "
                            f"(last: {h.where()}: {type(e).__name__}); stopping"
                        ) from None
                    self.reruns += 1
                    queue.appendleft(i)
                    continue
                results[i] = loss
                done += 1
                self.n_evaluated += 1
                self.n_generate += 1
                idle.append(h)
        finally:
            # tasks still in flight (an error above) finish on their workers, which stay usable
            self._idle = list(idle) + [h for h, _ in running.values()]
            self.seconds_evaluating += time.perf_counter() - t0
        return [float(typing.cast(float, x)) for x in results]  # every slot is filled by now

    def _replace(self, h: _Handle, err: BaseException, schedule_name: str | None) -> None:
        self.lost_workers += 1
        what = f"; schedule {schedule_name!r} runs again on another worker" if schedule_name else ""
        log.warning(
            "ECAD search: Ray worker %s lost (%s)%s; starting a replacement", h.where(), type(err).__name__, what
        )
        try:
            self._ray.kill(h.actor)
        except Exception:  # noqa: BLE001 - it is gone already
            pass
        self._spawn(self._refs_ref)

    # -- helpers -----------------------------------------------------------------------
    def _on_any_worker(self, method: str, what: str, *args):
        h = self._idle[0]
        try:
            return self._ray.get(getattr(h.actor, method).remote(*args))
        except _lost_errors(self._ray) as e:
            raise EvaluationError(
                f"Ray worker {h.where()} was lost while {what} ({type(e).__name__}); "
                "start the search again, it resumes from its checkpoint"
            ) from None

    def on_worker(self, fn: Callable[[Any], Any]):
        """``fn(evaluator)`` run on one worker (e.g. to read the layout and cost model of its pipeline)."""
        self.start()
        return self._on_any_worker("call", "running a setup function", fn)

    @property
    def workers(self) -> list[dict]:
        """What each running worker reported at start-up (name, host, pid, GPU ids)."""
        return [{k: v for k, v in h.info.items() if k != "describe"} for h in self._idle]

    def close(self) -> None:
        """Stop the workers (and Ray, if this evaluator started it)."""
        ray = self._ray
        for h in list(self._idle) + list(self._starting.values()):
            try:
                ray.kill(h.actor)
            except Exception:  # noqa: BLE001
                pass
        self._idle, self._starting = [], {}
        self._started = self._prepared = False
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
