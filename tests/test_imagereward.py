"""ImageReward without the image-reward package: scores equal to the official implementation's.

The golden scores below are what the official THUDM/ImageReward code (image-reward 1.5,
``ImageReward.utils.load`` + ``ImageReward.score``; timm 0.6.13, transformers 4.36.2,
torch 2.14) gives for the tiny checkpoint of ``imagereward_fixture`` on its images and
prompts: ``imagereward_fixture.official_scores`` (run as that module's script, in a
separate environment with the official package). The fixture writes the same files
on every run, so these tests compare our port with the official code without it.
"""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
from support.imagereward_fixture import (
    MED_CONFIG,
    PROMPTS,
    image_sets,
    state_dict,
    write_tiny_imagereward,
    write_tokenizer,
)

from ecad_core.metrics import ImageRewardScore, MetricUnavailable, load_metric, score_drop
from ecad_core.metrics import imagereward as irm

OFFICIAL_SCORES = [
    -0.38077306747436523,
    -0.458724707365036,
    -0.48554718494415283,
    -0.44723156094551086,
    -0.4789646565914154,
]
OFFICIAL_IDS = [
    [2, 11, 47, 48, 49, 50, 51, 3],
    [2, 52, 53, 54, 5, 71, 72, 3],
    [
        2,
        57,
        58,
        59,
        60,
        11,
        61,
        5,
        86,
        62,
        5,
        73,
        74,
        75,
        56,
        11,
        76,
        68,
        50,
        78,
        53,
        79,
        60,
        80,
        87,
        81,
        64,
        50,
        82,
        57,
        95,
        57,
        83,
        84,
        3,
    ],
    [2, 48, 96, 87, 7, 36, 96, 93, 109, 92, 27, 111, 100, 103, 110, 1, 3],
    [2, 55, 56, 11, 63, 64, 11, 66, 65, 3],
]
TOL = 1e-5  # float32 roundoff is ~4e-7; one pixel one gray level off already moves a score by ~3e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_imagereward(tmp_path_factory.mktemp("imagereward") / "weights")


def _score_sets(metric) -> list[float]:
    out = []
    for u8, prompts in image_sets():
        s = metric.score(u8.float() / 255, prompts)
        assert s.dtype == torch.float64 and s.shape == (len(prompts),)
        out += s.tolist()
    return out


def test_scores_equal_the_official_implementation(tiny):
    m = ImageRewardScore(tiny)
    assert m.name == "imagereward"
    assert _score_sets(m) == pytest.approx(OFFICIAL_SCORES, abs=TOL)
    # batching does not change a score: one image at a time, and the folder instead of the file
    one = ImageRewardScore(tiny.parent, batch_size=1)
    assert _score_sets(one) == pytest.approx(OFFICIAL_SCORES, abs=TOL)
    # neither the official package nor its timm/fairscale stack is used
    assert not {"ImageReward", "timm", "fairscale"} & set(sys.modules)


def test_tokenization_is_blips(tiny):
    tok = ImageRewardScore(tiny)._model.tokenizer
    assert len(tok) == len(tok.get_vocab()) and tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [
        len(tok) - 2,
        len(tok) - 1,
    ]
    enc = tok(PROMPTS, padding="max_length", truncation=True, max_length=35)
    assert all(len(ids) == 35 and ids[0] == tok.cls_token_id for ids in enc["input_ids"])  # [CLS], not [ENC]
    # the official tokenizer's ids (transformers 4.36 slow BertTokenizer), padding (0) left out
    assert [[i for i in ids if i] for ids in enc["input_ids"]] == OFFICIAL_IDS
    assert [sum(m) for m in enc["attention_mask"]] == [len(ids) for ids in OFFICIAL_IDS]
    assert tok.convert_ids_to_tokens(OFFICIAL_IDS[3][:5]) == ["[CLS]", "fox", "##e", "##s", "!"]


def test_preprocess_is_the_official_transform():
    tv = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    official = tv.Compose(
        [
            tv.Resize(224, interpolation=tv.InterpolationMode.BICUBIC),
            tv.CenterCrop(224),
            lambda im: im.convert("RGB"),
            tv.ToTensor(),
            tv.Normalize(irm.CLIP_MEAN, irm.CLIP_STD),
        ]
    )
    g = torch.Generator().manual_seed(0)
    for h, w in [(224, 224), (225, 301), (301, 225), (50, 50), (64, 48), (400, 200), (223, 224)]:
        x = torch.rand(2, 3, h, w, generator=g)
        ours = irm.preprocess(x, 224)
        u8 = (x * 255).round().to(torch.uint8)
        ref = torch.stack([official(Image.fromarray(a.permute(1, 2, 0).numpy())) for a in u8])
        assert torch.equal(ours, ref), (h, w)


def test_load_metric_and_score_drop(tiny):
    metric = load_metric("imagereward", tiny)
    u8, prompts = image_sets()[0]
    ref = u8.float() / 255
    ref_scores = metric.score(ref, prompts)
    assert ref_scores.tolist() == pytest.approx(OFFICIAL_SCORES[:3], abs=TOL)
    assert score_drop(metric, list(ref), prompts, ref_scores) == pytest.approx(0.0, abs=1e-12)
    worse = [
        (r + 0.3 * torch.rand(r.shape, generator=torch.Generator().manual_seed(i))).clamp(0, 1)
        for i, r in enumerate(ref)
    ]
    drop = score_drop(metric, worse, prompts, ref_scores)
    assert drop == pytest.approx(float(ref_scores.mean() - metric.score(torch.stack(worse), prompts).mean()))
    assert drop != 0


# -- strict loading: a checkpoint that does not fit never scores ------------------------------------
def _write(tmp_path, sd, **kw):
    return write_tiny_imagereward(tmp_path / "w", sd=sd, **kw)


def test_missing_or_renamed_key_raises(tmp_path):
    sd = state_dict()
    del sd["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"]
    with pytest.raises(
        MetricUnavailable,
        match=r"missing key\(s\) blip\.text_encoder\.encoder\.layer\.0\."
        r"crossattention\.self\.key\.weight",
    ):
        ImageRewardScore(_write(tmp_path, sd))
    sd = state_dict()
    sd["mlp.layer.7.weight"] = sd.pop("mlp.layers.7.weight")
    with pytest.raises(
        MetricUnavailable,
        match=r"missing key\(s\) mlp\.layers\.7\.weight; "
        r"unexpected key\(s\) mlp\.layer\.7\.weight",
    ):
        ImageRewardScore(_write(tmp_path, sd))
    sd = state_dict()  # an extra module the official model does not have
    sd["blip.text_encoder.pooler.dense.weight"] = torch.zeros(768, 768)
    with pytest.raises(MetricUnavailable, match=r"unexpected key\(s\) blip\.text_encoder\.pooler\.dense\.weight"):
        ImageRewardScore(_write(tmp_path, sd))
    sd = state_dict()
    sd["mlp.layers.4.weight"] = sd["mlp.layers.4.weight"][:, :100]
    with pytest.raises(MetricUnavailable, match=r"mlp\.layers\.4\.weight \(64, 100\) \(expected \(64, 128\)\)"):
        ImageRewardScore(_write(tmp_path, sd))
    # the keys scoring does not use may be absent
    sd = {k: v for k, v in state_dict().items() if k not in irm.UNUSED_KEYS}
    assert _score_sets(ImageRewardScore(_write(tmp_path, sd))) == pytest.approx(OFFICIAL_SCORES, abs=TOL)


def test_wrong_or_corrupt_files_raise(tmp_path):
    (tmp_path / "w").mkdir()
    with pytest.raises(MetricUnavailable, match=r"ImageReward weights not found: .*ImageReward\.pt does not exist"):
        ImageRewardScore(tmp_path / "w" / "ImageReward.pt")
    with pytest.raises(MetricUnavailable, match="needs its local checkpoint file ImageReward.pt"):
        ImageRewardScore(None)
    bad = tmp_path / "w" / "ImageReward.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricUnavailable, match="cannot read the ImageReward checkpoint"):
        ImageRewardScore(bad)
    torch.save([torch.zeros(1)], bad)
    with pytest.raises(MetricUnavailable, match="not an ImageReward checkpoint"):
        ImageRewardScore(bad)
    torch.save({"model.weight": torch.zeros(1)}, bad)  # some other model's state dict
    with pytest.raises(
        MetricUnavailable,
        match=r"not an ImageReward checkpoint: missing key\(s\) .*"
        r"blip\.visual_encoder\.cls_token",
    ):
        ImageRewardScore(bad)


def test_med_config_defaults_only_when_they_fit(tmp_path, monkeypatch):
    path = write_tiny_imagereward(tmp_path / "w", med_config=False)
    # BLIP's defaults (12 layers, vocab 30524, ...) do not fit the tiny checkpoint: say so, never guess
    with pytest.raises(
        MetricUnavailable,
        match=r"BLIP's default text config \(med_config\.json not found beside "
        r"it.*missing key\(s\) blip\.text_encoder\.encoder\.layer\.1\.",
    ):
        ImageRewardScore(path)
    # defaults that fit the shapes are used (here: defaults patched to the tiny config)
    monkeypatch.setattr(
        irm,
        "MED_DEFAULTS",
        {
            **irm.MED_DEFAULTS,
            **{
                k: MED_CONFIG[k]
                for k in ("num_hidden_layers", "intermediate_size", "max_position_embeddings", "vocab_size")
            },
        },
    )
    assert _score_sets(ImageRewardScore(path)) == pytest.approx(OFFICIAL_SCORES, abs=TOL)
    monkeypatch.setattr(irm, "MED_DEFAULTS", {**irm.MED_DEFAULTS, "intermediate_size": 300})
    with pytest.raises(MetricUnavailable, match=r"intermediate\.dense\.weight \(256, 768\) \(expected \(300, 768\)\)"):
        ImageRewardScore(path)


def test_tokenizer_lookup_and_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(irm, "TOKENIZER_HUB_IDS", ("ecad-test/no-such-tokenizer",))  # not in any local cache
    path = write_tiny_imagereward(tmp_path / "w", tokenizer=False)
    with pytest.raises(
        MetricUnavailable,
        match=r"bert-base-uncased tokenizer \(vocab\.txt\) from local files; "
        r"looked in: .*w/tokenizer; .*w/bert-base-uncased; "
        r"ecad-test/no-such-tokenizer in the local Hugging Face cache",
    ):
        ImageRewardScore(path)
    with pytest.raises(MetricUnavailable, match=r"tokenizer not found: .*elsewhere/vocab\.txt does not exist"):
        ImageRewardScore(path, tokenizer=tmp_path / "elsewhere")
    # a folder named by the caller, or bert-base-uncased/ beside the checkpoint
    tok = write_tokenizer(tmp_path / "elsewhere")
    assert _score_sets(ImageRewardScore(path, tokenizer=tok)) == pytest.approx(OFFICIAL_SCORES, abs=TOL)
    shutil.move(tok, path.parent / "bert-base-uncased")
    assert _score_sets(ImageRewardScore(path)) == pytest.approx(OFFICIAL_SCORES, abs=TOL)
    # a different vocabulary (here one token more) does not fit the checkpoint's embeddings
    with open(path.parent / "bert-base-uncased" / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("extra\n")
    n = MED_CONFIG["vocab_size"]
    with pytest.raises(
        MetricUnavailable,
        match=rf"has {n + 1} tokens with \[DEC\] and \[ENC\] but the "
        rf"checkpoint's text encoder has {n}",
    ):
        ImageRewardScore(path)


def test_bad_inputs(tiny):
    m = ImageRewardScore(tiny)
    with pytest.raises(ValueError, match="2 image"):
        m.score(torch.rand(2, 3, 32, 32), ["one prompt"])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        m.score(torch.rand(3, 32, 32), ["a"])
    assert m.score(torch.zeros(0, 3, 32, 32), []).shape == (0,)
