"""Evaluation metrics on synthetic data against known values; metric models loaded from local files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from support.eval_metric_weights import cached_inception, write_clip, write_imagereward, write_lpips

from ecad_core.evaluation import (
    MetricSuite,
    MetricWeights,
    comparison_grid,
    load_eval_prompts,
    parse_metrics,
    to_csv,
    to_json_dict,
    to_markdown,
)
from ecad_core.evaluation.runner import run_evaluation
from ecad_core.metrics import (
    ClipScore,
    InceptionFeatures,
    Lpips,
    MetricUnavailable,
    fid_from_features,
    frechet_distance,
    psnr,
    ssim,
)
from ecad_core.metrics.fid import clean_resize, feature_stats, load_image_folder, to_uint8


def _images(n, seed, h=32, w=32):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# -- fidelity (the functions the search uses too) ------------------------------------------
def test_psnr_of_known_noise():
    x = torch.full((2, 3, 16, 16), 0.5, dtype=torch.float64)
    sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = x + 0.05 * sign  # every pixel off by exactly 0.05: MSE 0.0025
    assert torch.allclose(psnr(y, x), torch.full((2,), 10 * math.log10(1 / 0.0025), dtype=torch.float64))
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_identical_is_one_and_falls_with_noise():
    x = _images(2, 1)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    noisy = [float(ssim((x + s * torch.randn_like(x)).clamp(0, 1), x).mean()) for s in (0.02, 0.1, 0.3)]
    assert 1 > noisy[0] > noisy[1] > noisy[2]


# -- FID -----------------------------------------------------------------------------------
def test_frechet_distance_known_values():
    # diagonal covariances: ||mu||^2 + sum (sqrt(a) - sqrt(b))^2
    d = frechet_distance([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([4.0, 9.0]))
    assert d == pytest.approx(5 + (1 - 2) ** 2 + (2 - 3) ** 2)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    s1, s2 = a @ a.T, b @ b.T
    # independent formula: tr((S1 S2)^(1/2)) = sum of the square roots of the eigenvalues of S1 S2
    ref = float(np.trace(s1 + s2) - 2 * np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()) + 1.0
    assert frechet_distance(np.zeros(6), s1, np.ones(6) / math.sqrt(6), s2) == pytest.approx(ref, rel=1e-6)
    f = rng.normal(size=(10, 64))  # fewer samples than dimensions: singular covariance
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(f, f + 1.0) == pytest.approx(64.0, rel=1e-6)  # shifted mean only
    with pytest.raises(ValueError, match="at least 2 images"):
        fid_from_features(f[:1], f)
    # few images (sample-space SVD) and many images (covariance route) give the same distance
    a, b = rng.normal(size=(5, 40)), 2 * rng.normal(size=(7, 40)) + 0.3
    assert fid_from_features(a, b) == pytest.approx(frechet_distance(*feature_stats(a), *feature_stats(b)), rel=1e-6)


def test_clean_resize_is_pil_bicubic_per_channel_on_uint8():
    u8 = to_uint8(_images(1, 2, 20, 28))[0]
    out = clean_resize(u8)
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    want = np.asarray(Image.fromarray(u8[:, :, 1].astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC))
    assert np.allclose(out[:, :, 1], np.clip(want, 0, 255))
    flat = np.full((10, 10, 3), 77, np.uint8)
    assert np.allclose(clean_resize(flat), 77, atol=1e-3)
    with pytest.raises(ValueError, match="uint8"):
        clean_resize(u8.astype(np.float32))


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures(cached_inception())


def test_fid_inception_from_local_file(inception, tmp_path):
    a, b = _images(2, 3), _images(2, 4) * 0.4
    fa = inception.features(a)
    assert fa.shape == (2, 2048) and np.isfinite(fa).all() and fa.std() > 0
    assert fid_from_features(fa, inception.features(b)) > 1e-3
    # the same images again, read back from PNGs: the same features, FID ~ 0
    for i, img in enumerate(to_uint8(a)):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    again = inception.features_uint8(load_image_folder(tmp_path))
    assert np.allclose(again, fa, atol=1e-4)
    assert fid_from_features(fa, again) == pytest.approx(0.0, abs=1e-6)


def test_fid_weights_missing_or_wrong_are_clear(tmp_path):
    with pytest.raises(MetricUnavailable, match="pt_inception-2015-12-05"):
        InceptionFeatures(None)
    with pytest.raises(MetricUnavailable, match="does not exist"):
        InceptionFeatures(tmp_path / "nope.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(MetricUnavailable, match="do not fit"):
        InceptionFeatures(tmp_path / "bad.pth")


# -- LPIPS / CLIP ----------------------------------------------------------------------------
def test_lpips_from_local_files(tmp_path):
    folder = write_lpips(tmp_path / "lpips")
    m = Lpips(folder)
    x, y = _images(2, 5), _images(2, 6)
    assert torch.equal(m.distance(x, x), torch.zeros(2, dtype=torch.float64))
    d = m.distance(x, y)
    assert (d > 0).all() and torch.allclose(d, m.distance(y, x))
    assert float(m.distance(x, (x + 0.02).clamp(0, 1)).mean()) < float(d.mean())
    (folder / "alex.pth").unlink()
    with pytest.raises(MetricUnavailable, match="alex.pth"):
        Lpips(folder)


def test_clip_score_from_local_folder(tmp_path):
    clip = ClipScore(write_clip(tmp_path / "clip"))
    s = clip.score(_images(2, 7), ["a red fox", "a lighthouse"])
    assert s.shape == (2,) and ((s >= 0) & (s <= 100)).all()


def test_imagereward_in_the_suite(tmp_path):
    """ImageReward from a local checkpoint (tiny, official layout) through the evaluation suite."""
    from ecad_core.metrics import ImageRewardScore

    path = write_imagereward(tmp_path / "imagereward")
    suite = MetricSuite.load("psnr,imagereward", MetricWeights(imagereward=path))
    assert suite.skipped == {}
    ref, out = _images(2, 11, 40, 56), _images(2, 12, 40, 56)
    prompts = ["a red fox in the snow", "a lighthouse at night"]
    means, _per = suite.score(list(out), list(ref), prompts)
    direct = ImageRewardScore(path).score(out, prompts)
    assert means["imagereward"] == pytest.approx(float(direct.mean()), abs=1e-9)
    # without the prompt text it is skipped with the reason, never scored as 0
    suite = MetricSuite.load("imagereward", MetricWeights(imagereward=path))
    means, _ = suite.score(list(out), list(ref), None)
    assert "imagereward" not in means and "prompt" in suite.skipped["imagereward"]


# -- the suite: optional metrics, skipped with a reason ------------------------------------
def test_parse_metrics():
    assert parse_metrics(None) == parse_metrics("all") == ("psnr", "ssim", "lpips", "clip", "imagereward", "fid")
    assert parse_metrics("ssim, psnr,ssim") == ("ssim", "psnr")
    with pytest.raises(ValueError, match="'fidd'"):
        parse_metrics("psnr,fidd")


def test_missing_weights_are_skipped_with_reasons_never_zero():
    suite = MetricSuite.load("all", MetricWeights())
    assert set(suite.skipped) == {"lpips", "clip", "imagereward", "fid"}
    assert all(len(why) > 20 for why in suite.skipped.values())
    assert "ImageReward.pt" in suite.skipped["imagereward"] and "nothing is downloaded" in suite.skipped["imagereward"]
    ref, out = _images(2, 8), _images(2, 9)
    means, _ = suite.score(list(out), list(ref), ["a", "b"])
    assert set(means) == {"psnr", "ssim"}
    # latents: image metrics skipped, relative MSE reported
    lat = MetricSuite.load("psnr,ssim", MetricWeights())
    means, _per = lat.score(list(out), list(ref), None, kind="latent")
    assert set(means) == {"latent_rel_mse"} and means["latent_rel_mse"] > 0


class _FakeGenerate:
    """Deterministic 'sampling': the no-cache images, plus noise that grows with the schedule's reuse."""

    def __init__(self, n):
        self.ref = list(_images(n, 10))

    def __call__(self, schedule):
        if schedule is None:
            return self.ref
        g = torch.Generator().manual_seed(11)
        return [(r + 0.05 * torch.randn(r.shape, generator=g)).clamp(0, 1) for r in self.ref]


def test_report_tables_mark_skipped_and_not_applicable(inception):
    from ecad_core import Schedule, make_layout

    sched = Schedule.every_n(make_layout("pixart", 2), 4, 2, name="every2")
    suite = MetricSuite(
        ("psnr", "ssim", "fid", "clip"), models={"fid": inception}, skipped={"clip": "no CLIP weights given"}
    )
    res = run_evaluation(
        _FakeGenerate(2),
        [("every2", sched)],
        suite,
        sample_prompts=["a", "b"],
        sample_seeds=[0, 0],
        warmup=False,
        settings={"steps": 4},
        keep_outputs=1,
    )
    md = to_markdown(res)
    assert "| no cache |" in md and "| every2 |" in md and "clip skipped: no CLIP weights given" in md
    nocache, row = res.rows
    assert nocache.metrics == {} and set(row.metrics) == {"psnr", "ssim", "fid"}
    assert 20 < row.metrics["psnr"] < 35 and 0 < row.metrics["ssim"] < 1 and row.metrics["fid"] > 0
    d = to_json_dict(res)
    json.dumps(d, allow_nan=False)
    assert d["rows"][0]["metrics"] == {"psnr": "—", "ssim": "—", "fid": "—", "clip": "n/a"}
    assert d["rows"][1]["metrics"]["clip"] == "n/a" and d["skipped"]["clip"]
    lines = to_csv(res).splitlines()
    assert lines[0].endswith("psnr,ssim,fid,clip") and len(lines) == 3
    # scored on every sample; only the first kept afterwards (the reference row stays whole)
    assert len(nocache.outputs) == 2 and len(row.outputs) == 1 and len(row.per_sample["psnr"]) == 2
    grid = comparison_grid(nocache.outputs, [("every2", row.outputs)], rows=2)
    assert tuple(grid.shape) == (14 + 32, 3 * 32 + 2 * 2, 3)


# -- prompt sets -----------------------------------------------------------------------------
def test_shipped_and_user_prompt_sets(tmp_path):
    assert len(load_eval_prompts(prompt_set="parti")) == 1632
    db = load_eval_prompts(prompt_set="drawbench")
    assert len(db) == 200 and not db[66].startswith('"')
    assert len(load_eval_prompts(prompt_set="ecad-calibration", limit=5)) == 5
    mjhq = tmp_path / "meta_data.json"
    mjhq.write_text(
        json.dumps({"a1": {"prompt": "a cat", "category": "animals"}, "b2": {"prompt": "a city", "category": "places"}})
    )
    assert load_eval_prompts(mjhq) == ["a cat", "a city"]
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": " A dog. "}]}))
    assert load_eval_prompts(coco) == ["A dog."]
    with pytest.raises(ValueError, match="unknown prompt set 'coco'"):
        load_eval_prompts(prompt_set="coco")
    with pytest.raises(ValueError, match="exactly one"):
        load_eval_prompts(mjhq, "parti")
