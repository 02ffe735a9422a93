"""Search checkpoints: data only (safetensors + JSON), resumes bit for bit, never a pickle, never the global RNG."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from ecad_core import make_layout
from ecad_core.search import CheckpointError, SearchSettings, run_search
from ecad_core.search.checkpoint import CHECKPOINT_FILE

PIX = make_layout("pixart", 3)
STEPS = 8
REPO = Path(__file__).resolve().parents[1]


class Scored:
    """Deterministic losses (early and long reuse hurt); records every schedule it is asked about."""

    def __init__(self, batch_size=None, touch_global_rng=False):
        self.batch_size = batch_size
        self.touch_global_rng = touch_global_rng
        self.seen: list[tuple[str, bytes]] = []

    def describe(self):
        return {"evaluator": "scored"}

    def evaluate(self, schedules):
        if self.touch_global_rng:  # other code in the process draws from the global generators
            np.random.random(7)
            random.random()
        out = []
        for s in schedules:
            self.seen.append((s.name, s.bits.tobytes()))
            b = s.effective_bits()
            w = np.linspace(2.0, 0.2, b.shape[0])[:, None] * np.linspace(1.0, 2.0, b.shape[1])[None, :]
            runs = (~b[1:] & ~b[:-1]).sum()
            out.append(float(0.5 * (w * ~b).sum() / w.sum() + 0.01 * runs))
        return out


def _settings(generations, **kw):
    return SearchSettings(population=8, seed=11, generations=generations, **kw)


def _sig(res):
    """Everything a search result promises, bit for bit (wall-clock times left out)."""
    return {
        "front": [
            (p.quality_loss, p.compute_fraction, p.generation, p.schedule.name, p.schedule.bits.tobytes())
            for p in res.front
        ],
        "archive": res.archive.tobytes(),
        "generation": res.generation,
        "evaluations": res.evaluations,
        "history": [{k: v for k, v in h.items() if k != "elapsed_s"} for h in res.history],
    }


def _read(path):
    with safe_open(str(path), framework="np") as f:
        return json.loads(f.metadata()["comfyui-ecad"]), {k: f.get_tensor(k) for k in f.keys()}


def _write(path, meta, tensors):
    save_file(tensors, str(path), metadata={"comfyui-ecad": json.dumps(meta)})


def _ckpt_sig(path):
    meta, tensors = _read(path)
    for k in ("elapsed_s",):
        meta.pop(k)
    meta["history"] = [{k: v for k, v in h.items() if k != "elapsed_s"} for h in meta["history"]]
    return meta, {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in tensors.items()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference: 6 generations after the seeds."""
    d = tmp_path_factory.mktemp("straight")
    ev = Scored()
    res = run_search(ev, PIX, STEPS, d, _settings(6))
    return res, ev, d


@pytest.mark.parametrize("stops", [[1], [3], [5], [1, 2, 3, 4, 5]], ids=lambda s: "-".join(map(str, s)))
def test_resume_after_any_generation_equals_uninterrupted(tmp_path, straight, stops):
    ref, ref_ev, ref_dir = straight
    seen = []
    for g in stops:
        ev = Scored()
        part = run_search(ev, PIX, STEPS, tmp_path, _settings(g))
        assert part.generation == g and part.stopped == "generations"
        seen += ev.seen
        # whatever else runs in the process between sessions draws from the global generators
        np.random.seed(g)
        random.seed(g)
    ev = Scored(touch_global_rng=True)
    res = run_search(ev, PIX, STEPS, tmp_path, _settings(6))
    assert res.resumed_from == stops[-1]
    assert _sig(res) == _sig(ref)
    # the same schedules, named alike, in the same order: nothing evaluated twice, nothing skipped
    assert seen + ev.seen == ref_ev.seen
    # and the resumed run's checkpoint is the uninterrupted run's, array for array
    assert _ckpt_sig(tmp_path / CHECKPOINT_FILE) == _ckpt_sig(ref_dir / CHECKPOINT_FILE)


def test_cancel_inside_generations_then_resume_equals_uninterrupted(tmp_path, straight):
    ref, ref_ev, _ = straight
    seen = []
    cuts = (5, 13, 20, 31)  # evaluations in all (batch 1: a poll before each): inside generations 0 to 3
    assert ref.evaluations > cuts[-1] and ref.history[0]["evaluated"] > cuts[0]
    for cut in cuts:
        ev = Scored(batch_size=1)
        res = run_search(ev, PIX, STEPS, tmp_path, _settings(6), should_stop=lambda: len(seen) + len(ev.seen) >= cut)  # noqa: B023 - used in this iteration
        assert res.stopped == "cancelled" and res.evaluations == cut + 1  # + no-cache, never run
        seen += ev.seen
    ev = Scored(batch_size=3)
    res = run_search(ev, PIX, STEPS, tmp_path, _settings(6))
    assert res.stopped == "generations" and _sig(res) == _sig(ref)
    # the same schedules in the same order (a resumed generation numbers its remaining candidates from 0)
    assert [b for _, b in seen + ev.seen] == [b for _, b in ref_ev.seen]


def test_search_and_resume_never_touch_the_global_random_state(tmp_path):
    def states():
        np_state = np.random.get_state()
        return (np_state[0], np_state[1].tobytes(), *np_state[2:]), random.getstate()

    np.random.seed(1234)
    random.seed(99)
    before = states()
    run_search(Scored(), PIX, STEPS, tmp_path, _settings(2))
    assert states() == before
    np.random.seed(4321)  # another state when the search resumes: it must stay
    random.seed(7)
    before = states()
    res = run_search(Scored(), PIX, STEPS, tmp_path, _settings(4))
    assert res.resumed_from == 2 and states() == before
    meta, _ = _read(tmp_path / CHECKPOINT_FILE)
    assert not {k for k in meta if "global" in k or "python" in k}, sorted(meta)


def _planted_pickle(marker: Path) -> bytes:
    """A pickle (protocol 2) that creates ``marker`` when it is loaded: proof that nothing unpickles it."""
    return b"\x80\x02cbuiltins\nopen\n(S'" + str(marker).encode() + b"'\nS'w'\ntR."


def test_old_pickle_checkpoint_is_refused_never_loaded(tmp_path):
    marker = tmp_path / "pickle-was-loaded"
    d = tmp_path / "search"
    run_search(Scored(), PIX, STEPS, d, _settings(1))
    (d / "checkpoint.pkl").write_bytes(_planted_pickle(marker))
    with pytest.raises(CheckpointError) as e:
        run_search(Scored(), PIX, STEPS, d, _settings(2))
    msg = str(e.value)
    assert str(d / "checkpoint.pkl") in msg and "old pickle format" in msg and "start the search over" in msg
    assert "delete the file" in msg and "another output folder" in msg
    assert not marker.exists()
    # a pickle under the new name is refused the same way
    (d / "checkpoint.pkl").unlink()
    (d / CHECKPOINT_FILE).write_bytes(_planted_pickle(marker))
    with pytest.raises(CheckpointError, match="old pickle format"):
        run_search(Scored(), PIX, STEPS, d, _settings(2))
    assert not marker.exists()
    # starting over (resume off) replaces it
    (d / "checkpoint.pkl").write_bytes(_planted_pickle(marker))
    res = run_search(Scored(), PIX, STEPS, d, _settings(1), resume=False)
    assert res.resumed_from is None and not (d / "checkpoint.pkl").exists()
    assert run_search(Scored(), PIX, STEPS, d, _settings(2)).resumed_from == 1
    assert not marker.exists()


def test_checkpoint_of_another_pymoo_is_refused(tmp_path):
    run_search(Scored(), PIX, STEPS, tmp_path, _settings(1))
    meta, tensors = _read(tmp_path / CHECKPOINT_FILE)
    meta["pymoo"] = "0.5.0"
    _write(tmp_path / CHECKPOINT_FILE, meta, tensors)
    with pytest.raises(
        CheckpointError,
        match=r"written with pymoo 0\.5\.0, this is pymoo 0\.6\.2; resume with the "
        r"same pymoo version or use another output folder",
    ):
        run_search(Scored(), PIX, STEPS, tmp_path, _settings(2))


def _damaged_variants(meta: dict, tensors: dict):
    """(what, meta, tensors) with one thing wrong each."""

    def m(**kw):
        return {**meta, **kw}

    def t(**kw):
        return {**tensors, **{k.replace("__", "."): v for k, v in kw.items()}}

    nsga = meta["nsga"]
    key = tensors["memo.key"]
    yield "next_gen str", m(next_gen="2"), tensors
    yield "next_gen negative", m(next_gen=-1), tensors
    yield "next_gen beyond history", m(next_gen=9), tensors
    yield "history not a list", m(history={"a": 1}), tensors
    yield "elapsed NaN", m(elapsed_s=float("nan")), tensors
    yield "elapsed bool", m(elapsed_s=True), tensors
    yield "seed_keys not hex", m(seed_keys=["zz" * len(meta["seed_keys"][0])] + meta["seed_keys"][1:]), tensors
    yield "seed_keys short", m(seed_keys=[k[:-2] for k in meta["seed_keys"]]), tensors
    yield "seed_keys int", m(seed_keys=5), tensors
    yield "nsga missing", m(nsga=None), tensors
    yield "nsga list", m(nsga=[1, 2]), tensors
    yield "n_iter wrong", m(nsga={**nsga, "n_iter": 99}), tensors
    yield "rng other generator", m(nsga={**nsga, "rng": {**nsga["rng"], "bit_generator": "MT19937"}}), tensors
    yield "rng bad state", m(nsga={**nsga, "rng": {**nsga["rng"], "state": {"state": "x", "inc": 1}}}), tensors
    yield "rng missing", m(nsga={k: v for k, v in nsga.items() if k != "rng"}), tensors
    yield "memo key as float", meta, t(memo__key=key.astype(np.float64))
    yield "memo key too short", meta, t(memo__key=key[:, :-1].copy())
    yield "memo loss length", meta, t(memo__loss=tensors["memo.loss"][:-1].copy())
    yield "memo loss NaN", meta, t(memo__loss=np.full_like(tensors["memo.loss"], np.nan))
    yield "memo fraction zero", meta, t(memo__compute_fraction=np.zeros_like(tensors["memo.compute_fraction"]))
    yield "memo generation negative", meta, t(memo__generation=-tensors["memo.generation"] - 1)
    yield "memo duplicate key", meta, t(memo__key=np.repeat(key[:1], len(key), axis=0))
    padded = key.copy()
    padded[:, -1] |= 1  # 7 * 9 bits: the last byte has a padding bit
    yield "memo padding bits", meta, t(memo__key=padded)
    yield "memo missing", meta, {k: v for k, v in tensors.items() if k != "memo.loss"}
    yield "extra array", meta, t(extra=np.zeros(3))
    yield "nsga X as uint8", meta, t(nsga__X=tensors["nsga.X"].astype(np.uint8))
    yield "nsga X bytes not 0/1", meta, t(nsga__X=(tensors["nsga.X"].view(np.uint8) * 3).view(np.bool_))
    yield "nsga X width", meta, t(nsga__X=tensors["nsga.X"][:, :-1].copy())
    yield "nsga X empty", meta, t(nsga__X=tensors["nsga.X"][:0].copy())
    yield "nsga F inf", meta, t(nsga__F=np.full_like(tensors["nsga.F"], np.inf))
    yield "nsga F one column", meta, t(nsga__F=tensors["nsga.F"][:, :1].copy())
    yield "nsga rank negative", meta, t(nsga__rank=tensors["nsga.rank"] - 5)
    yield "nsga crowding int", meta, t(nsga__crowding=np.zeros(len(tensors["nsga.crowding"]), np.int64))
    yield "nsga missing", meta, {k: v for k, v in tensors.items() if not k.startswith("nsga.")}
    yield "format", m(format="something else"), tensors
    yield "version", m(version=1), tensors
    yield "meta not a dict", [1, 2], tensors


def test_damaged_checkpoints_give_checkpoint_errors_naming_the_file(tmp_path):
    good = tmp_path / "good"
    run_search(Scored(), PIX, STEPS, good, _settings(2))
    meta, tensors = _read(good / CHECKPOINT_FILE)
    d = tmp_path / "bad"
    d.mkdir()
    path = d / CHECKPOINT_FILE
    n = 0
    for what, m, t in _damaged_variants(meta, tensors):
        _write(path, m, t)
        with pytest.raises(CheckpointError) as e:
            run_search(Scored(), PIX, STEPS, d, _settings(3))
        assert str(path) in str(e.value), (what, str(e.value))
        assert "start the search over" in str(e.value), (what, str(e.value))
        n += 1
    assert n >= 30
    raw = (good / CHECKPOINT_FILE).read_bytes()
    for what, data in [
        ("empty", b""),
        ("truncated header", raw[:5]),
        ("truncated JSON", raw[:200]),
        ("truncated arrays", raw[:-7]),
        ("not safetensors", b"hello world, not a checkpoint"),
        ("JSON instead", json.dumps(meta).encode()),
    ]:
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            run_search(Scored(), PIX, STEPS, d, _settings(3))
        assert str(path) in str(e.value), (what, str(e.value))
    for text in ("{not json", "[" * 100_000 + "]" * 100_000):
        save_file(tensors, str(path), metadata={"comfyui-ecad": text})
        with pytest.raises(CheckpointError, match="JSON part"):
            run_search(Scored(), PIX, STEPS, d, _settings(3))
    save_file(tensors, str(path))  # a safetensors file without our metadata
    with pytest.raises(CheckpointError, match="not a comfyui-ecad search checkpoint"):
        run_search(Scored(), PIX, STEPS, d, _settings(3))
    path.unlink()
    path.mkdir()
    with pytest.raises(CheckpointError, match="not a regular file"):
        run_search(Scored(), PIX, STEPS, d, _settings(3))


def test_flipped_bytes_give_a_checkpoint_error_or_a_search(tmp_path):
    """Damage anywhere: CheckpointError naming the file, or (flips inside the numbers) a search that runs."""
    good = tmp_path / "good"
    run_search(Scored(), PIX, STEPS, good, _settings(1))
    raw = bytearray((good / CHECKPOINT_FILE).read_bytes())
    rng = np.random.default_rng(5)
    d = tmp_path / "bad"
    d.mkdir()
    outcomes = set()
    for pos in rng.choice(len(raw), size=60, replace=False):
        data = bytearray(raw)
        data[pos] ^= 0xFF
        (d / CHECKPOINT_FILE).write_bytes(bytes(data))
        try:
            run_search(Scored(), PIX, STEPS, d, _settings(2), write_files=False)
            outcomes.add("ran")
        except CheckpointError as e:
            assert str(d / CHECKPOINT_FILE) in str(e)
            outcomes.add("refused")
    assert "refused" in outcomes


def test_checkpoint_is_data_only(tmp_path):
    run_search(Scored(), PIX, STEPS, tmp_path, _settings(1))
    raw = (tmp_path / CHECKPOINT_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])  # plain safetensors: a JSON header, then raw numbers
    meta = json.loads(header.pop("__metadata__")["comfyui-ecad"])
    assert {v["dtype"] for v in header.values()} <= {"BOOL", "U8", "I64", "F64"}
    assert meta["format"] == "comfyui-ecad/search-checkpoint" and meta["version"] == 2
    assert meta["pymoo"] == "0.6.2" and meta["next_gen"] == 2 and len(meta["history"]) == 2
    assert meta["nsga"]["rng"]["bit_generator"] == "PCG64"
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.tmp"))


def test_front_without_matplotlib(tmp_path):
    """matplotlib is optional (the `plot` extra): without it the search writes its front, only no picture."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from tests.test_search_checkpoint import Scored, _settings, PIX, STEPS\n"
        "from ecad_core.search import run_search, load_front\n"
        f"res = run_search(Scored(), PIX, STEPS, {str(tmp_path)!r}, _settings(1))\n"
        "assert not (res.front_dir / 'front.png').exists()\n"
        "assert len(load_front(res.front_dir)) == len(res.front) > 0\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_pymoo_pinned_to_the_version_checkpoints_need_and_matplotlib_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    import pymoo

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pin = f"pymoo=={pymoo.__version__}"  # what run_search writes into a checkpoint and asks of a resume
    assert [d.split(";")[0].strip() for d in project["dependencies"] if d.startswith("pymoo")] == [pin]
    reqs = [ln.split("#")[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    assert [r for r in reqs if r.startswith("pymoo")] == [pin]
    # front.py imports matplotlib when it is there: an optional extra (and the tests' own), not a dependency
    extras = project["optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["plot"])
    assert any(d.startswith("matplotlib") for d in extras["test"])
    assert not any(d.startswith("matplotlib") for d in project["dependencies"])


# -- surrogate pre-screening (surrogate.py): its random picks and fits must resume bit for bit too ---------------
def _screened(generations):
    return _settings(generations, screening=4, evaluated_per_generation=3, exploration=0.34)


@pytest.fixture(scope="module")
def straight_screened(tmp_path_factory):
    d = tmp_path_factory.mktemp("screened")
    ev = Scored()
    return run_search(ev, PIX, STEPS, d, _screened(6)), ev, d


@pytest.mark.parametrize("stops", [[1], [4], [1, 2, 3, 4, 5]], ids=lambda s: "-".join(map(str, s)))
def test_screened_search_resumes_bit_for_bit(tmp_path, straight_screened, stops):
    ref, ref_ev, ref_dir = straight_screened
    seen = []
    for g in stops:
        ev = Scored()
        run_search(ev, PIX, STEPS, tmp_path, _screened(g))
        seen += ev.seen
        np.random.seed(g)
    ev = Scored(touch_global_rng=True)
    res = run_search(ev, PIX, STEPS, tmp_path, _screened(6))
    assert _sig(res) == _sig(ref) and seen + ev.seen == ref_ev.seen
    assert _ckpt_sig(tmp_path / CHECKPOINT_FILE) == _ckpt_sig(ref_dir / CHECKPOINT_FILE)


def test_screened_search_cancelled_inside_a_generation_resumes_bit_for_bit(tmp_path, straight_screened):
    ref, ref_ev, _ = straight_screened
    seen = []
    for cut in (5, 9, 13):  # inside generation 0, then inside evolved generations (3 evaluations each)
        ev = Scored(batch_size=1)
        res = run_search(ev, PIX, STEPS, tmp_path, _screened(6), should_stop=lambda: len(seen) + len(ev.seen) >= cut)  # noqa: B023 - used in this iteration
        assert res.stopped == "cancelled"
        seen += ev.seen
    ev = Scored()
    res = run_search(ev, PIX, STEPS, tmp_path, _screened(6))
    assert _sig(res) == _sig(ref)
    assert [b for _, b in seen + ev.seen] == [b for _, b in ref_ev.seen]


def test_screening_is_part_of_the_resume_key_and_old_checkpoints_keep_theirs(tmp_path):
    # checkpoints written before screening existed hold no such fields: at the defaults the key is unchanged
    assert not {"screening", "evaluated_per_generation", "exploration"} & set(SearchSettings().resume_key())
    run_search(Scored(), PIX, STEPS, tmp_path, _settings(1))
    with pytest.raises(CheckpointError, match="screening"):
        run_search(Scored(), PIX, STEPS, tmp_path, _screened(2))
