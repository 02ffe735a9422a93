"""The surrogate's probe features (surrogate.probe_features), the ridge's two solving forms, the table's way into
screen() from run_search, and the mutation rate of a search from the probe's rows."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ecad_core import make_layout
from ecad_core.errors import SearchSettingsError
from ecad_core.search import GenomeSpace, SearchSettings, run_search
from ecad_core.search import nsga as nsga_mod
from ecad_core.search.surrogate import Ridge, _hv2, probe_features, screen, screen_features

LAYOUT = make_layout("pixart", 1)  # 3 units: attn1, attn2, ff


def _table(steps: int, units: int) -> np.ndarray:
    """E[u, t, c] = (u + 1) * (t - c) * 10**-c: every entry tells which unit, step and last computed step."""
    u, t, c = np.meshgrid(np.arange(units), np.arange(steps), np.arange(steps), indexing="ij")
    return np.where(c <= t, (u + 1.0) * (t - c) * 10.0 ** (-c), 0.0)


def test_probe_features_read_each_units_error_from_its_last_computed_step():
    space = GenomeSpace(LAYOUT, 4)  # genome: steps 1..3 x 3 units
    E = _table(4, 3)
    bits = np.ones((3, 3), bool)
    bits[0, 0] = bits[1, 0] = False  # attn1 reused at steps 1 and 2 (last computed: 0), computed at 3
    bits[2, 2] = False  # ff reused at step 3 (last computed: 2)
    (f,) = probe_features(space, bits.reshape(1, -1), E)
    err = f[:9].reshape(3, 3)
    want = np.zeros((3, 3))
    want[0, 0] = E[0, 1, 0]  # 1 * 1 * 1
    want[1, 0] = E[0, 2, 0]  # 1 * 2 * 1
    want[2, 2] = E[2, 3, 2]  # 3 * 1 * 0.01
    np.testing.assert_allclose(err, want)
    np.testing.assert_allclose(f[9:12], want.sum(1))  # per step
    assert f[12] == pytest.approx(want.sum())  # total
    # all computed: no error anywhere; beside the raw features when a table is given, alone the raw ones without
    assert not probe_features(space, np.ones((1, 9), bool), E).any()
    raw = screen_features(space, bits.reshape(1, -1))
    both = screen_features(space, bits.reshape(1, -1), E)
    assert both.shape[1] == raw.shape[1] + 13 and np.array_equal(both[:, : raw.shape[1]], raw)
    # the raw ones: reuse bits, then each unit's staleness (steps since its last computed step), its per-step sum
    # and sum of squares
    reuse, age = raw[0, :9].reshape(3, 3), raw[0, 9:18].reshape(3, 3)
    np.testing.assert_array_equal(reuse, ~bits)
    want_age = np.zeros((3, 3))
    want_age[0, 0], want_age[1, 0], want_age[2, 2] = 1, 2, 1
    np.testing.assert_array_equal(age, want_age)
    np.testing.assert_array_equal(raw[0, 18:21], want_age.sum(1))
    np.testing.assert_array_equal(raw[0, 21:24], (want_age**2).sum(1))
    assert raw.shape[1] == 24


@pytest.mark.parametrize("n, p", [(20, 60), (80, 12)])
def test_ridge_leave_one_out_matches_refitting_without_each_sample(n, p):
    """Both solving forms (kernel for n <= p, primal for n > p) give the true leave-one-out errors."""
    rng = np.random.default_rng(3)
    F = rng.random((n, p))
    y = F[:, :3] @ np.array([1.0, -2.0, 0.5]) + 0.05 * rng.standard_normal(n)
    r = Ridge(F, y)
    # refit by hand at the chosen penalty on the standardisation of all samples, one left out at a time
    Z = (F - r.mu) / r.sd
    loo = []
    for i in range(n):
        keep = np.arange(n) != i
        Zk, yk = Z[keep], y[keep]
        # with the full data's centring and penalty alpha * n: a fit on the other samples, its residual on i
        A = Zk @ Zk.T + r.alpha * n * np.eye(n - 1)
        c = np.linalg.solve(A, yk - r.y0)
        loo.append((y[i] - r.y0) - Z[i] @ (Zk.T @ c))
    assert r.loo_mse == pytest.approx(float(np.mean(np.square(loo))), rel=1e-8)
    # and the fit itself: the ridge solution at that penalty
    w = np.linalg.solve(Z.T @ Z + r.alpha * n * np.eye(p), Z.T @ (y - r.y0))
    np.testing.assert_allclose(r.w, w, rtol=1e-7, atol=1e-10)


def test_screen_with_the_probe_table_picks_better_offspring_than_without():
    """The loss is each unit's probe-estimated error weighted by a per-unit effect the table does not show:
    from 30 evaluated genomes the bits and ages alone cannot learn it, the probe's features can."""
    steps = 8
    space = GenomeSpace(LAYOUT, steps)
    rng = np.random.default_rng(0)
    E = rng.random((3, steps, steps)) ** 3 * np.tril(np.ones((steps, steps)), -1)[None]
    effect = np.array([5.0, 0.2, 1.0])  # per unit: how much its output change matters for the image

    def objectives(X):
        err = probe_features(space, X, E)[:, : (steps - 1) * 3].reshape(len(X), steps - 1, 3)
        loss = 1e-3 + (err * effect).sum((1, 2)) / 20
        return np.stack([loss, X.mean(1)], 1)

    def gain(known_F, F):
        return _hv2(np.vstack([known_F, F])) - _hv2(known_F)

    known = rng.random((30, space.length)) < rng.random((30, 1))
    known_F = objectives(known)
    cand = rng.random((200, space.length)) < rng.random((200, 1))
    cand_F = objectives(cand)
    args = (space, cand, cand_F[:, 1], known, known_F, 8, 0.0, 1.0)
    with_table = screen(*args, np.random.default_rng(1), changes=E)
    without = screen(*args, np.random.default_rng(1))
    assert len(with_table) == len(set(with_table)) == 8
    assert gain(known_F, cand_F[with_table]) > 2 * gain(known_F, cand_F[without])  # 0.025 against 0.008


class _Loss:
    """Loss: reused units weighted by step (early reuse hurts more)."""

    batch_size = None

    def evaluate(self, schedules):
        out = []
        for s in schedules:
            b = s.effective_bits()
            out.append(float(((~b) * np.linspace(2.0, 0.2, b.shape[0])[:, None]).sum() / b.size))
        return out


def test_run_search_hands_the_probe_table_to_screening(monkeypatch):
    seen = []
    real = nsga_mod.screen

    def spy(*a, **kw):
        seen.append(kw.get("changes"))
        return real(*a, **kw)

    monkeypatch.setattr(nsga_mod, "screen", spy)
    steps = 6
    E = _table(steps, 3)
    st = SearchSettings(population=6, generations=3, seed=1, screening=4, evaluated_per_generation=3)
    res = run_search(_Loss(), LAYOUT, steps, None, st, unit_changes=E)
    assert seen and all(c is not None and np.array_equal(c, E) for c in seen)
    seen.clear()
    res_plain = run_search(_Loss(), LAYOUT, steps, None, st)  # no table: the raw features, as before
    assert seen and all(c is None for c in seen)
    assert res.evaluations == res_plain.evaluations
    seen.clear()
    off = SearchSettings(
        population=6, generations=3, seed=1, screening=4, evaluated_per_generation=3, probe_features=False
    )
    run_search(_Loss(), LAYOUT, steps, None, off, unit_changes=E)  # the table given, its features not wanted
    assert seen and all(c is None for c in seen)
    with pytest.raises(SearchSettingsError, match="probe features"):
        SearchSettings(probe_features=1).validate()
    # a table of the wrong shape is refused when screening would use it
    with pytest.raises(SearchSettingsError, match="units x steps x steps"):
        run_search(_Loss(), LAYOUT, steps, None, st, unit_changes=E[:, :-1, :-1])


def _whole_and_resumed(tmp_path, steps, E, started, resumed_with):
    """A 4-generation search run whole, and one stopped after 2 generations (``started(gens)``'s settings) then
    resumed to 4 with ``resumed_with(4)``."""
    whole = run_search(_Loss(), LAYOUT, steps, tmp_path / "a", started(4), unit_changes=E)
    run_search(_Loss(), LAYOUT, steps, tmp_path / "b", started(2), unit_changes=E)
    resumed = run_search(_Loss(), LAYOUT, steps, tmp_path / "b", resumed_with(4), unit_changes=E)
    assert resumed.resumed_from == 2
    return whole, resumed


def _front_sig(r):
    return [(p.quality_loss, p.compute_fraction, p.schedule.bits.tobytes()) for p in r.front]


def test_a_search_with_probe_features_resumes_to_the_uninterrupted_front(tmp_path):
    steps = 6
    E = _table(steps, 3)

    def settings(gens):
        return SearchSettings(
            population=6,
            generations=gens,
            seed=4,
            screening=3,
            evaluated_per_generation=3,
        )

    whole, resumed = _whole_and_resumed(tmp_path, steps, E, settings, settings)
    assert _front_sig(resumed) == _front_sig(whole) and resumed.evaluations == whole.evaluations


def test_mutation_flips_two_bits_per_child_by_default_and_old_searches_resume_with_one_per_step(tmp_path, caplog):
    space = GenomeSpace(LAYOUT, 6)  # 15 bits, 3 per step
    assert SearchSettings(probe_seeds=5).bit_prob(space) == pytest.approx(2 / 15)
    assert SearchSettings().bit_prob(space) == pytest.approx(1 / 3)  # without the probe's rows: ECAD's
    assert SearchSettings(probe_seeds=5, mutation_flips=None).bit_prob(space) == pytest.approx(1 / 3)
    assert SearchSettings(probe_seeds=5, mutation_prob=0.5).bit_prob(space) == 0.5  # an explicit probability wins
    assert SearchSettings(probe_seeds=5, mutation_flips=40).bit_prob(space) == 1.0
    with pytest.raises(SearchSettingsError, match="mutation flips"):
        SearchSettings(mutation_flips=0).validate()
    steps = 6

    E = _table(steps, 3)

    screened = dict(population=6, seed=3, probe_seeds=3, screening=3, evaluated_per_generation=3)

    def today(gens):
        return SearchSettings(generations=gens, **screened)

    def old(gens):  # a screened probe search started before mutation_flips / probe_features existed
        return SearchSettings(generations=gens, mutation_flips=None, probe_features=False, **screened)

    for k in ("mutation_flips", "probe_features"):  # its checkpoint's settings lack the keys
        assert k not in old(2).resume_key() and k in today(2).resume_key()
    # resumed with today's defaults (as the CLI and the node pass them): it goes on as it started, and says so
    with caplog.at_level(logging.WARNING, logger="ecad.search"):
        whole, resumed = _whole_and_resumed(tmp_path, steps, E, old, today)
    assert _front_sig(resumed) == _front_sig(whole)
    said = [r.getMessage() for r in caplog.records if "was started before" in r.getMessage()]
    assert len(said) == 1 and "mutation_flips and probe_features" in said[0] and "mutation_flips=None" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ecad.search"):
        new = run_search(_Loss(), LAYOUT, steps, tmp_path / "c", today(4), unit_changes=E)
    assert new.archive.tolist() != whole.archive.tolist()  # a new search flips fewer bits
    assert not [r for r in caplog.records if "was started before" in r.getMessage()]  # nothing to say
