"""Ray evaluation backend: same front as the local backend, lost workers lose nothing, Ray stays optional.

One local Ray cluster (2 CPUs) is started for the module; every search here uses
the tiny random-weight PixArt-α (``tiny:pixart-alpha``), 1 prompt, 4 steps, 64².
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_search import cli  # the main CLI's error handling around the search subcommands

from ecad_core.cli.search import EvolveSpec, _probe_changes
from ecad_core.search import EvaluationError, SearchSettings, SearchSettingsError, run_search
from ecad_core.search.sensitivity import default_probe_seeds

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red cat on a mat"
SEARCH = [
    "--model",
    "tiny:pixart-alpha",
    "--steps",
    4,
    "--height",
    64,
    "--width",
    64,
    "--population",
    6,
    "--generations",
    2,
    "--seed",
    3,
    "--quiet",
]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the Ray backend tests need ray: bash scripts/setup_env.sh")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # workers unpickle this module's fault-injecting factory by value (the tests folder is not on their path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="ecad-tests")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    f.write_text(PROMPT + "\n")
    return f


@pytest.fixture(scope="module")
def local_search(tmp_path_factory, prompts_file):
    """The reference: the same search on the local (in-process) backend."""
    out = tmp_path_factory.mktemp("local") / "search"
    assert cli(["evolve", *SEARCH, "--prompts", prompts_file, "--out", out]) == 0
    return out


def _front_points(out: Path):
    idx = json.loads((out / "front" / "front.json").read_text())
    return [
        (
            p["quality_loss"],
            p["compute_fraction"],
            p["generation"],
            json.loads((out / "front" / p["file"]).read_text())["bits"],
        )
        for p in idx["points"]
    ]


def _same_search(a: Path, b: Path):
    assert (a / "evaluations.csv").read_text() == (b / "evaluations.csv").read_text()
    assert _front_points(a) == _front_points(b)
    ra = torch.load(a / "references.pt", weights_only=True)
    rb = torch.load(b / "references.pt", weights_only=True)
    assert ra["fingerprint"] == rb["fingerprint"]
    assert all(torch.equal(x, y) for x, y in zip(ra["outputs"], rb["outputs"], strict=True))


def _pids_gone(pids, timeout=20.0):
    end = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < end:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.discard(pid)
        time.sleep(0.2)
    return alive


# -- same front as the local backend ------------------------------------------------------
def test_ray_cli_gives_the_local_front_and_resumes_locally(ray_cluster, local_search, prompts_file, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "ray"
    args = ["evolve", *SEARCH, "--prompts", prompts_file, "--out", out]
    args[args.index("--generations") + 1] = 1
    assert cli(args + ["--ray", "auto", "--ray-workers", 2]) == 0
    summary = json.loads(capsys.readouterr().out)
    workers = summary["ray"]["workers"]
    assert (
        len(workers) == 2 and len({w["pid"] for w in workers}) == 2 and os.getpid() not in {w["pid"] for w in workers}
    )
    assert summary["ray"]["lost_workers"] == 0
    assert summary["generation"] == 1 and summary["sampling_runs"] == summary["evaluations"]  # + reference - no-cache
    # generations 0 and 1 exactly as the local backend evaluated them
    local_rows = (local_search / "evaluations.csv").read_text().splitlines()
    assert (out / "evaluations.csv").read_text().splitlines() == [
        r for r in local_rows if r.split(",")[1] in ("generation", "0", "1")
    ]
    # the workers stop with the command (the cluster, which the command did not start, stays)
    assert not _pids_gone([w["pid"] for w in workers])
    assert ray_cluster.is_initialized()
    # the checkpoint does not depend on the backend: the local backend finishes the search
    args[args.index("--generations") + 1] = 2
    assert cli(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed_from_generation"] == 1 and summary["sampling_runs"] < summary["evaluations"]
    _same_search(local_search, out)


# -- a worker lost mid-generation ------------------------------------------------------------
class _FaultyGenerate:
    """Wraps a worker's generate(): on a planned schedule, the first time only, the worker dies mid-run."""

    def __init__(self, inner, plan: dict, folder: str):
        self.inner, self.plan, self.folder = inner, plan, Path(folder)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, schedule):
        how = self.plan.get(getattr(schedule, "name", None))
        marker = self.folder / f"hit-{schedule.name}" if how else None
        if how and not marker.exists():
            marker.write_text(str(os.getpid()))
            if how == "exit":  # the process dies (as with a crash or the OOM killer)
                os._exit(1)
            # "kill": ask the test to ray.kill() this actor while it is busy
            import ray

            (self.folder / "kill-me").write_text(ray.get_runtime_context().get_actor_name())
            time.sleep(120)
        return self.inner(schedule)


class _FaultySpec:
    def __init__(self, spec: EvolveSpec, plan: dict, folder: Path):
        self.spec, self.plan, self.folder = spec, plan, str(folder)

    def __call__(self):
        ev = self.spec()
        ev.generate = _FaultyGenerate(ev.generate, self.plan, self.folder)
        return ev


@pytest.mark.slow
def test_killed_workers_lose_no_evaluation(ray_cluster, local_search, tmp_path):
    from ecad_core.search.ray_backend import RayEvaluator

    spec = EvolveSpec(model="tiny:pixart-alpha", prompts=(PROMPT,), seeds=(0,), steps=4, cfg=4.5, height=64, width=64)
    faults = tmp_path / "faults"
    faults.mkdir()
    # in generation 1 the test kills a busy actor with ray.kill; "doomed" makes its worker process exit
    plan = {"gen001-001": "kill", "doomed": "exit"}
    killed = []

    def killer():
        f = faults / "kill-me"
        end = time.monotonic() + 300
        while not f.exists() and time.monotonic() < end:
            time.sleep(0.05)
        if f.exists():
            name = f.read_text()
            ray_cluster.kill(ray_cluster.get_actor(name))
            killed.append(name)

    t = threading.Thread(target=killer, daemon=True)
    ev = RayEvaluator(_FaultySpec(spec, plan, faults), workers=2)
    try:
        t.start()
        layout, cost, hint = ev.on_worker(spec.search_inputs)
        out = tmp_path / "search"
        # as the CLI runs it: the unit probe on a worker, its default number of seeds
        changes = ev.on_worker(functools.partial(_probe_changes, steps=4))
        settings = SearchSettings(population=6, generations=2, seed=3, probe_seeds=default_probe_seeds(6, 4))
        res = run_search(ev, layout, 4, out, settings, cost=cost, model=hint, unit_changes=changes)
        t.join(timeout=5)
        assert killed and [p.name for p in faults.glob("hit-*")] == ["hit-gen001-001"]
        assert ev.lost_workers == 1 and ev.reruns == 1
        assert res.generation == 2 and ev.n_evaluated == res.evaluations - 1  # each once, no-cache never
        _same_search(local_search, out)
        pids = [w["pid"] for w in ev.workers]  # the running ones; the replacement may still be starting
        assert pids
        # a schedule that loses its worker max_attempts times stops the search, naming the schedule
        ev.max_attempts = 1
        doomed = res.front[0].schedule.copy(name="doomed")
        with pytest.raises(EvaluationError, match=r"schedule 'doomed' lost its Ray worker 1 times"):
            ev.evaluate([doomed])
        assert ev.lost_workers == 2 and ev.reruns == 1
    finally:
        ev.close()
    assert not _pids_gone(pids)


def test_ray_setting_errors(ray_cluster, prompts_file, tmp_path, capsys):
    from ecad_core.search.ray_backend import RayEvaluator

    spec = EvolveSpec(model="tiny:pixart-alpha", prompts=(PROMPT,), seeds=(0,), steps=4, cfg=4.5, height=64, width=64)
    with pytest.raises(SearchSettingsError, match=r"3 Ray worker\(s\).*do not fit the Ray cluster, which has 0 GPU"):
        RayEvaluator(spec, workers=3, gpus_per_worker=1).start()
    with pytest.raises(SearchSettingsError, match="Ray workers must be an integer >= 1"):
        RayEvaluator(spec, workers=0)
    with pytest.raises(SearchSettingsError, match="GPUs per worker must be a number >= 0"):
        RayEvaluator(spec, gpus_per_worker=-1)
    with pytest.raises(SearchSettingsError, match="factory must be callable"):
        RayEvaluator(object())
    base = ["evolve", *SEARCH, "--prompts", prompts_file, "--out", tmp_path / "o", "--ray", "auto"]
    assert cli(base + ["--ray-workers", 0]) == 2
    assert "--ray-workers must be >= 1" in capsys.readouterr().out
    # a model the workers cannot load: the worker's own error, not a Ray traceback
    bad = ["evolve", *SEARCH, "--prompts", prompts_file, "--out", tmp_path / "o", "--ray", "auto", "--ray-workers", 1]
    bad[bad.index("tiny:pixart-alpha")] = str(tmp_path / "no-such-model")
    assert cli(bad) == 2
    text = capsys.readouterr().out
    assert "cannot load a diffusers pipeline" in text and "no-such-model" in text


# -- Ray stays optional -----------------------------------------------------------------------
def test_clear_error_when_ray_is_missing(monkeypatch, prompts_file, tmp_path, capsys):
    from ecad_core.search.ray_backend import RayEvaluator

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the package
    with pytest.raises(SearchSettingsError, match=r"pip install 'comfyui-ecad\[ray\]'"):
        RayEvaluator(lambda: None)
    t = time.monotonic()
    assert cli(["evolve", *SEARCH, "--prompts", prompts_file, "--out", tmp_path / "o", "--ray", "auto"]) == 2
    assert "pip install 'comfyui-ecad[ray]'" in capsys.readouterr().out
    assert time.monotonic() - t < 5  # refused before any model is loaded
    assert not (tmp_path / "o").exists()


def test_local_search_and_node_pack_never_import_ray():
    code = (
        "import sys\n"
        "import ecad_core, ecad_core.search, ecad_core.cli.search, ecad_core.search.ray_backend\n"
        "from ecad_core import make_layout\n"
        "from ecad_core.search import SearchSettings, run_search\n"
        "class Ev:\n"
        "    def evaluate(self, s):\n"
        "        return [float((~x.bits).sum()) for x in s]\n"
        "run_search(Ev(), make_layout('pixart', 2), 4, None, SearchSettings(population=4, generations=1))\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    # the ComfyUI node pack: no ray import anywhere in it
    for f in (REPO / "nodes").rglob("*.py"):
        text = f.read_text(encoding="utf-8")
        assert "import ray" not in text and "from ray" not in text, f
