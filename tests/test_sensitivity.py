"""The unit probe (``ecad_core.engine.probe``) and the schedules found from it (``ecad_core.search.sensitivity``)."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
import torch

from ecad_core import Schedule, make_layout
from ecad_core.engine.probe import UnitChangeProbe, record_unit_changes
from ecad_core.search import EvaluationError, GenomeSpace, SearchSettings, SearchSettingsError, run_search
from ecad_core.search.checkpoint import CheckpointError
from ecad_core.search.sensitivity import (
    check_changes,
    default_probe_seeds,
    load_unit_changes,
    probe_seeds,
    save_unit_changes,
    step_rows,
)

PIX = make_layout("pixart", 2)  # 6 units


def _row_error(E: np.ndarray, row: np.ndarray) -> float:
    err, last = 0.0, 0
    for t in range(len(row)):
        if row[t]:
            last = t
        else:
            err += E[t, last]
    return err


def _random_changes(rng, units: int, steps: int) -> np.ndarray:
    return np.tril(rng.random((units, steps, steps)), -1)


def test_step_rows_are_the_least_error_rows_for_each_count():
    rng = np.random.default_rng(0)
    for _ in range(25):
        T = int(rng.integers(2, 8))
        C = _random_changes(rng, 3, T)
        E = C.sum(0)
        rows = step_rows(C)
        assert len(rows) == T
        for k, row in enumerate(rows, start=1):
            assert row[0] and row.sum() == k
            best = min(
                _row_error(E, np.isin(np.arange(T), (0, *comb))) for comb in itertools.combinations(range(1, T), k - 1)
            )
            assert _row_error(E, row) == pytest.approx(best, abs=1e-12)


def test_step_rows_follow_the_changes():
    # the outputs change a lot early and barely late: the computed steps crowd at the start
    T = 10
    E = np.zeros((1, T, T))
    for t in range(T):
        for c in range(t):
            E[0, t, c] = sum(1.0 / (s + 1) ** 3 for s in range(c, t))
    for k in (3, 4, 5):
        computed = np.flatnonzero(step_rows(E)[k - 1])
        assert len(computed) == k and computed.max() <= T // 2
    # and a uniform change gives evenly spaced steps (every-n where it divides)
    U = np.zeros((1, T, T))
    for t in range(T):
        U[0, t, :t] = (t - np.arange(t)) ** 2
    assert np.flatnonzero(step_rows(U)[4]).tolist() == [0, 2, 4, 6, 8]


def test_probe_seeds_named_spread_and_one_row_for_all_units():
    space = GenomeSpace(PIX, 8)
    C = _random_changes(np.random.default_rng(1), PIX.n_units, 8)
    every = probe_seeds(space, C, 100)
    assert [int(s.bits[:, 0].sum()) for s in every] == list(range(1, 8))  # no-cache (8 of 8) left out
    for s in every:
        assert s.bits[0].all() and (s.bits == s.bits[:, :1]).all()
        assert s.name == f"probe-{int(s.bits[:, 0].sum())}-of-8-steps"
        assert s.provenance["search_seed"]["kind"] == "unit-probe"
    three = probe_seeds(space, C, 3)
    assert [int(s.bits[:, 0].sum()) for s in three] == [1, 4, 7]
    assert probe_seeds(space, C, 0) == []
    assert default_probe_seeds(24, 20) == 19 and default_probe_seeds(24, 50) == 20 and default_probe_seeds(2, 20) == 1


def test_bad_tables_are_refused_with_what_is_wrong():
    space = GenomeSpace(PIX, 5)
    with pytest.raises(SearchSettingsError, match=r"shape \(6, 4, 4\).*\(6, 5, 5\)"):
        check_changes(np.zeros((6, 4, 4)), space)
    bad = np.zeros((6, 5, 5))
    bad[0, 1, 0] = np.nan
    with pytest.raises(SearchSettingsError, match="non-finite"):
        check_changes(bad, space)
    with pytest.raises(SearchSettingsError, match="negative"):
        check_changes(-np.ones((6, 5, 5)), space)


def test_probe_file_round_trip_and_damage(tmp_path):
    C = _random_changes(np.random.default_rng(2), 6, 5)
    path = save_unit_changes(tmp_path / "unit_probe.safetensors", C, 4)
    got, n = load_unit_changes(path)
    assert n == 4 and np.array_equal(got, C)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="unit_probe.safetensors.*not a readable unit-probe file"):
        load_unit_changes(path)


class _Loss:
    """A loss that grows with each unit's staleness: long reuse runs hurt most."""

    def __init__(self):
        self.seen: list[Schedule] = []

    def evaluate(self, schedules):
        out = []
        for s in schedules:
            self.seen.append(s)
            b = s.effective_bits()
            stale = np.zeros(b.shape[1])
            loss = 0.0
            for row in b:
                stale = np.where(row, 0, stale + 1)
                loss += float((stale**2).sum())
            out.append(loss / b.size)
        return out


def test_search_seeds_its_population_with_the_probe_rows():
    steps = 6
    C = _random_changes(np.random.default_rng(3), PIX.n_units, steps)
    ev = _Loss()
    res = run_search(ev, PIX, steps, None, SearchSettings(population=8, generations=1, probe_seeds=5), unit_changes=C)
    first = [s.name for s in ev.seen[:5]]
    assert first == [f"probe-{k}-of-{steps}-steps" for k in range(1, 6)]
    assert res.front
    with pytest.raises(SearchSettingsError, match="unit probe's table"):
        run_search(_Loss(), PIX, steps, None, SearchSettings(population=8, generations=1, probe_seeds=2))
    with pytest.raises(SearchSettingsError, match="probe seeds must be an integer >= 0"):
        SearchSettings(probe_seeds=-1).validate()
    # checkpoints written before the setting existed still resume: left out of the resume key at its default
    assert "probe_seeds" not in SearchSettings().resume_key()
    assert SearchSettings(probe_seeds=3).resume_key()["probe_seeds"] == 3


# -- the probe on a model --------------------------------------------------------------------
class _Engine:
    def __init__(self):
        self.step, self.branch = 0, 0


def _one_branch(probe, outs, b) -> float:
    idx, scale = probe._picks[(0, 1000)]
    return float(((outs[(2, b)] - outs[(0, b)])[idx] ** 2).sum()) * scale


def test_probe_subsamples_large_outputs_and_sums_branches():
    probe = UnitChangeProbe(1, 3, max_coords=100, seed=0)
    eng = _Engine()
    probe.bind(eng)
    g = torch.Generator().manual_seed(0)
    outs = {(t, b): torch.randn(1000, generator=g) for t in range(3) for b in (0, 1)}
    for t in range(3):
        for b in (0, 1):
            eng.step, eng.branch = t, b
            out = outs[(t, b)]
            assert probe(0, lambda out=out: out) is out  # the output passes through unchanged
    E = probe.changes()
    # a second run (another batch of samples) adds its changes
    probe.bind(eng)
    for t in range(3):
        eng.step, eng.branch = t, 0
        probe(0, lambda t=t: outs[(t, 0)] * 2)
    E2 = probe.changes()
    assert E2[0, 2, 0] == pytest.approx(E[0, 2, 0] + 4 * (E[0, 2, 0] - _one_branch(probe, outs, 1)), rel=1e-6)
    idx, scale = probe._picks[(0, 1000)]
    assert scale == 10.0 and len(idx) == 100
    for t in range(3):
        for c in range(3):
            want = 0.0
            if c < t:
                want = sum(float(((outs[(t, b)] - outs[(c, b)])[idx] ** 2).sum()) * 10 for b in (0, 1))
            assert E[0, t, c] == pytest.approx(want, rel=1e-6)
    # the estimate is close to the exact change (random data: the change is spread over the elements)
    exact = sum(float(((outs[(2, b)] - outs[(0, b)]) ** 2).sum()) for b in (0, 1))
    assert E[0, 2, 0] == pytest.approx(exact, rel=0.3)


@pytest.fixture(scope="module")
def pixart():
    from ecad_core.diffusers.tiny import tiny_pixart_pipeline

    pipe = tiny_pixart_pipeline("alpha", layers=2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_record_unit_changes_on_tiny_pixart_equals_hooked_outputs(pixart):
    from ecad_core.diffusers.adapters import find_diffusers_units
    from ecad_core.diffusers.generate import diffusers_generate_fn

    steps = 4
    gen = diffusers_generate_fn(pixart, ["a red cat on a mat"], [0], steps, 4.5, 64, 64)
    units = find_diffusers_units(pixart.transformer)
    E = record_unit_changes(gen, units.layout, steps, max_coords=10**9)
    # the same outputs seen by forward hooks on the unit modules in an uncached run (one call per step: CFG batched)
    seen: dict[int, list[torch.Tensor]] = {u: [] for u in range(units.layout.n_units)}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, u=u: seen[u].append(o.detach().double().reshape(-1)))
        for u, m in enumerate(units.modules)
    ]
    try:
        gen(None)
    finally:
        for h in hooks:
            h.remove()
    for u, outs in seen.items():
        assert len(outs) == steps
        for t in range(steps):
            for c in range(t):
                assert E[u, t, c] == pytest.approx(float(((outs[t] - outs[c]) ** 2).sum()), rel=1e-6)
        assert (np.triu(E[u]) == 0).all()
    assert (E.sum(0)[np.tril_indices(steps, -1)] > 0).all()


def test_record_unit_changes_refuses_a_generate_without_the_engine():
    def generate(schedule):  # samples without the pack: the probe can see nothing
        return [torch.zeros(4)]

    with pytest.raises(EvaluationError, match="saw no unit computation"):
        record_unit_changes(generate, PIX, 4)


def _evolve_args(tmp_path, out):
    """``ecad evolve`` on the tiny PixArt-α: one prompt, 5 steps, 64x64, population 8, into ``out``."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat on a mat\n")
    args = ["evolve", "--model", "tiny:pixart-alpha", "--prompts", prompts, "--steps", 5, "--height", 64]
    return args + ["--width", 64, "--population", 8, "--out", out, "--quiet"]


def test_cli_evolve_probes_once_and_resumes_with_it(tmp_path, capsys):
    from ecad_core.cli import build_parser

    out = tmp_path / "search"
    args = _evolve_args(tmp_path, out)

    def cli(extra):
        a = build_parser().parse_args([str(x) for x in args + extra])
        try:
            return a.fn(a)
        except (ValueError, OSError) as e:
            print(f"error: {e}")
            return 2

    assert cli(["--generations", 1]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["probe_seeds"] == 4 and summary["probe_images"] == 1  # auto: every row (steps - 1)
    assert summary["images_sampled"] == summary["sampling_runs"] + 1  # one image per run here, plus the probe's
    # every candidate run after the first got its step 0 from the first one (the reference runs without the pack)
    assert summary["step0_shared"] == summary["sampling_runs"] - 2 > 0
    _, n = load_unit_changes(out / "unit_probe.safetensors")
    assert n == 4
    seeds = [json.loads(p.read_text())["provenance"]["search"] for p in (out / "front").glob("[0-9]*-x*.json")]
    assert any(s["initial"] and s["initial"]["kind"] == "unit-probe" for s in seeds)
    # resume: the probe is read back, not run again
    assert cli(["--generations", 2]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed_from_generation"] == 1 and summary["probe_images"] == 0
    # a resume that changes the probe seeds is refused by the search's settings check
    assert cli(["--generations", 3, "--probe-seeds", 0]) == 2
    assert "probe_seeds" in capsys.readouterr().out
    # off for a new search: no probe file, no probe run
    out2 = tmp_path / "off"
    args[args.index(out)] = out2
    assert cli(["--generations", 1, "--probe-seeds", 0]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["probe_images"] == 0 and not (out2 / "unit_probe.safetensors").exists()
    assert cli(["--generations", 1, "--probe-seeds", "lots"]) == 2
    assert "--probe-seeds must be auto or an integer" in capsys.readouterr().out


def test_probe_seeds_forms_of_the_cli_and_the_node(tmp_path):
    from ecad_core.search.sensitivity import parse_probe_seeds, resolve_probe_seeds

    for auto in (None, "auto", " AUTO ", -1, "-1"):
        assert parse_probe_seeds(auto) is None
        assert resolve_probe_seeds(auto, tmp_path / "new", 24, 20) == 19  # default_probe_seeds
    assert parse_probe_seeds("3") == 3 and parse_probe_seeds(0) == 0 and parse_probe_seeds(np.int64(2)) == 2
    assert resolve_probe_seeds("5", None, 24, 20) == 5
    for bad, name in (("lots", "--probe-seeds"), ("-2", "--probe-seeds"), (-3, "probe_seeds"), (True, "probe_seeds")):
        with pytest.raises(SearchSettingsError, match=f"^{name} must be auto or an integer >= 0") as e:
            resolve_probe_seeds(bad, None, 24, 20, input_name=name)
        assert repr(bad) in str(e.value)


def _blocks_that_bypass_their_modules(monkeypatch):
    """A diffusers release whose ``BasicTransformerBlock`` computes attention and MLP without calling the modules'
    forward (as a fused kernel would) and dropped ``added_cond_kwargs`` (so the PixArt re-statement is unfit and
    the units are hooked at their modules, which then see no call): the model runs uncached, its image the same."""
    from diffusers.models.attention import BasicTransformerBlock

    original = BasicTransformerBlock.forward

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        timestep=None,
        cross_attention_kwargs=None,
        class_labels=None,
    ):
        names = ("attn1", "attn2", "ff")
        for n in names:
            m = self._modules[n]
            self.__dict__[n] = lambda *a, m=m, **k: type(m).forward(m, *a, **k)
        try:
            return original(
                self,
                hidden_states,
                attention_mask=attention_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                timestep=timestep,
                cross_attention_kwargs=cross_attention_kwargs,
                class_labels=class_labels,
            )
        finally:
            for n in names:
                del self.__dict__[n]

    monkeypatch.setattr(BasicTransformerBlock, "forward", forward)


def test_cli_evolve_without_units_through_the_engine_runs_without_probe_seeds(tmp_path, capsys, caplog, monkeypatch):
    from ecad_core.cli import build_parser

    _blocks_that_bypass_their_modules(monkeypatch)
    out = tmp_path / "search"
    args = _evolve_args(tmp_path, out)

    def cli(extra):
        a = build_parser().parse_args([str(x) for x in args + extra])
        with caplog.at_level(logging.WARNING, logger="ecad"):
            return a.fn(a)

    def skipped():
        return [r.getMessage() for r in caplog.records if "measured no unit through the ECAD engine" in r.getMessage()]

    # asked for explicitly: not the user's error (they cannot know), so the same fallback
    assert cli(["--generations", 1, "--probe-seeds", 3]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["probe_seeds"] == 0 and summary["probe_images"] == 1  # the probe's run was sampled
    assert "measured no unit" in summary["probe_skipped"], summary
    warned = skipped()
    assert len(warned) == 1, caplog.text  # what, where, which host
    assert (
        str(out) in warned[0] and "diffusers, model tiny:pixart-alpha" in warned[0] and "3 probe seed(s)" in warned[0]
    )
    assert not (out / "unit_probe.safetensors").exists()
    front = json.loads((out / "front" / "front.json").read_text())
    assert front["points"] and front["settings"]["probe_seeds"] == 0
    # a resume on auto keeps the search as it started: no probe run, no warning
    caplog.clear()
    assert cli(["--generations", 2]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed_from_generation"] == 1 and summary["probe_images"] == 0 and summary["probe_skipped"] is None
    assert not skipped()
