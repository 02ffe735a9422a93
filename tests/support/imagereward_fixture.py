"""A tiny ImageReward checkpoint in the official layout, bit-for-bit the same on every run.

``write_tiny_imagereward(folder)`` writes ``ImageReward.pt`` (official key names:
``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``blip.vision_proj.*``,
``blip.text_proj.*``, ``mlp.layers.*``), BLIP's ``med_config.json`` shrunk to one
layer, and a ``tokenizer/`` folder with a small WordPiece ``vocab.txt``.
``image_sets()`` gives fixed 8-bit images and prompts.

The values come from an integer hash (no random number generator), so they do not
depend on the torch version or platform. The golden scores in
``tests/test_imagereward.py`` were computed from these files by the official
THUDM/ImageReward code: ``official_scores`` below, run as a script in a separate
environment with the official package (not a test dependency)::

    python -m venv /tmp/irvenv   # + torch, torchvision, pillow
    /tmp/irvenv/bin/pip install "transformers==4.36.2"
    /tmp/irvenv/bin/pip install --no-deps image-reward==1.5 timm==0.6.13 fairscale==0.4.13
    /tmp/irvenv/bin/python tests/imagereward_fixture.py /tmp/irref
"""

from __future__ import annotations

import functools
import json
import math
import sys
import zlib
from pathlib import Path

import torch

# The ViT: BLIP's VisionTransformer at 224 px, shrunk (official 'large': width 1024, depth 24, patch 16).
VIT = {"image_size": 224, "patch": 32, "width": 128, "depth": 2, "heads": 2, "mlp_ratio": 4}
# The text encoder: BLIP's med_config.json with 1 layer; hidden_size stays 768 (the reward MLP's input).
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 256,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 40,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 1,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": None,  # set below
    "encoder_width": 768,
    "add_cross_attention": True,
}
_WORDS = (
    "a red fox in the snow lighthouse at night photo of an old man with hat painting cat on sofa "
    "blue sky over city street cinematic lighting highly detailed portrait castle mountain lake "
    "sunset dog running beach astronaut riding horse oil"
).split()
_PIECES = ["##s", "##ing", "##ed", "##er", "##ly"] + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
VOCAB = list(
    dict.fromkeys(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + list(",.!?-'")
        + list("abcdefghijklmnopqrstuvwxyz")
        + list("0123456789")
        + _WORDS
        + _PIECES
    )
)
MED_CONFIG["vocab_size"] = len(VOCAB) + 2  # + BLIP's [DEC] and [ENC]

PROMPTS = [
    "A red fox in the snow",
    "lighthouse at night, cinematic lighting",
    "an old man with a hat, oil painting, highly detailed portrait of a castle over the lake at sunset "
    "with dogs running on the beach and an astronaut riding a horse in the city street",  # > 35 tokens
    "Foxes! zebra quilt 42",  # word pieces and unknown words
    "photo of a cat on a blue sofa",
]


def _hash_uniform(n: int, name: str) -> torch.Tensor:
    """n values in (0, 1) from an integer hash of (index, name): exact integer arithmetic, no RNG."""
    m = 0xFFFFFFFF
    x = torch.arange(n, dtype=torch.int64)
    x.mul_(1103515245).add_(zlib.crc32(name.encode())).bitwise_and_(m)  # all products stay below 2**63
    for _ in range(2):
        x.bitwise_xor_(x >> 16).mul_(0x45D9F3B).bitwise_and_(m)
    x.bitwise_xor_(x >> 16)
    return x.double().add_(0.5).div_(2.0**32).float()


def _param(name: str, shape, std: float, mean: float = 0.0) -> torch.Tensor:
    """Uniform values with the given mean and standard deviation."""
    u = _hash_uniform(math.prod(shape), name).view(shape)
    return mean + (2 * u - 1) * (std * math.sqrt(3.0))


def _linear(sd: dict, name: str, n_out: int, n_in: int) -> None:
    sd[f"{name}.weight"] = _param(f"{name}.weight", (n_out, n_in), 1 / math.sqrt(n_in))
    sd[f"{name}.bias"] = _param(f"{name}.bias", (n_out,), 0.05)


def _norm(sd: dict, name: str, n: int) -> None:
    sd[f"{name}.weight"] = _param(f"{name}.weight", (n,), 0.1, 1.0)
    sd[f"{name}.bias"] = _param(f"{name}.bias", (n,), 0.05)


def state_dict() -> dict:
    """The tiny model's state dict with the official ImageReward key names and shapes (a fresh dict)."""
    return dict(_state_dict())


@functools.lru_cache(maxsize=1)
def _state_dict() -> dict:
    sd: dict[str, torch.Tensor] = {}
    w, p, grid = VIT["width"], VIT["patch"], VIT["image_size"] // VIT["patch"]
    v = "blip.visual_encoder."
    sd[v + "cls_token"] = _param(v + "cls_token", (1, 1, w), 0.5)
    sd[v + "pos_embed"] = _param(v + "pos_embed", (1, grid * grid + 1, w), 0.5)
    sd[v + "patch_embed.proj.weight"] = _param(v + "patch_embed.proj.weight", (w, 3, p, p), 1 / math.sqrt(3 * p * p))
    sd[v + "patch_embed.proj.bias"] = _param(v + "patch_embed.proj.bias", (w,), 0.05)
    for i in range(VIT["depth"]):
        b = f"{v}blocks.{i}."
        _norm(sd, b + "norm1", w)
        _linear(sd, b + "attn.qkv", 3 * w, w)
        _linear(sd, b + "attn.proj", w, w)
        _norm(sd, b + "norm2", w)
        _linear(sd, b + "mlp.fc1", VIT["mlp_ratio"] * w, w)
        _linear(sd, b + "mlp.fc2", w, VIT["mlp_ratio"] * w)
    _norm(sd, v + "norm", w)

    c = MED_CONFIG
    h, t = c["hidden_size"], "blip.text_encoder."
    sd[t + "embeddings.position_ids"] = torch.arange(c["max_position_embeddings"]).expand((1, -1))
    sd[t + "embeddings.word_embeddings.weight"] = _param(
        t + "embeddings.word_embeddings.weight", (c["vocab_size"], h), 0.5
    )
    sd[t + "embeddings.position_embeddings.weight"] = _param(
        t + "embeddings.position_embeddings.weight", (c["max_position_embeddings"], h), 0.5
    )
    _norm(sd, t + "embeddings.LayerNorm", h)
    for i in range(c["num_hidden_layers"]):
        lay = f"{t}encoder.layer.{i}."
        for att, kv in (("attention", h), ("crossattention", w)):
            _linear(sd, f"{lay}{att}.self.query", h, h)
            _linear(sd, f"{lay}{att}.self.key", h, kv)
            _linear(sd, f"{lay}{att}.self.value", h, kv)
            _linear(sd, f"{lay}{att}.output.dense", h, h)
            _norm(sd, f"{lay}{att}.output.LayerNorm", h)
        _linear(sd, lay + "intermediate.dense", c["intermediate_size"], h)
        _linear(sd, lay + "output.dense", h, c["intermediate_size"])
        _norm(sd, lay + "output.LayerNorm", h)
    # BLIP_Pretrain's contrastive projections (embed_dim 256): in the official state dict, unused by score()
    _linear(sd, "blip.vision_proj", 256, w)
    _linear(sd, "blip.text_proj", 256, h)
    widths = (h, 1024, 128, 64, 16, 1)
    for j, idx in enumerate((0, 2, 4, 6, 7)):
        _linear(sd, f"mlp.layers.{idx}", widths[j + 1], widths[j])
    return sd


def write_tokenizer(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    return folder


def write_tiny_imagereward(
    folder: Path, *, med_config: bool = True, tokenizer: bool = True, sd: dict | None = None
) -> Path:
    """``folder/ImageReward.pt`` (+ ``med_config.json``, ``tokenizer/``); returns the checkpoint path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ImageReward.pt"
    torch.save(state_dict() if sd is None else sd, path)
    if med_config:
        (folder / "med_config.json").write_text(json.dumps(MED_CONFIG, indent=2), encoding="utf-8")
    if tokenizer:
        write_tokenizer(folder / "tokenizer")
    return path


def _image(n: int, h: int, w: int, seed: str) -> torch.Tensor:
    """uint8 [n, 3, h, w]: a per-image sawtooth pattern plus hashed noise (integer arithmetic only)."""
    i = torch.arange(n).view(n, 1, 1, 1)
    c = torch.arange(3).view(1, 3, 1, 1)
    y = torch.arange(h).view(1, 1, h, 1)
    x = torch.arange(w).view(1, 1, 1, w)
    saw = (x * (3 + i + c) + y * (5 + 2 * i) + 40 * c) % 256
    noise = (_hash_uniform(n * 3 * h * w, seed).view(n, 3, h, w) * 96).long()
    return ((saw * 3 + noise * 2) // 4 + 16).clamp(0, 255).to(torch.uint8)


def image_sets() -> list[tuple[torch.Tensor, list[str]]]:
    """(uint8 images [N, 3, H, W], prompts): a landscape batch to shrink and a small portrait one to enlarge."""
    return [(_image(3, 240, 320, "landscape"), PROMPTS[:3]), (_image(2, 64, 48, "portrait"), PROMPTS[3:])]


def official_scores(folder: Path) -> list[float]:
    """Write the tiny checkpoint into ``folder`` and score ``image_sets()`` with the official code.

    Needs the official ``image-reward`` package (1.5) with what its BLIP code imports (timm 0.6.13,
    fairscale, torchvision, transformers 4.x). Only the official ``create_vit`` is swapped for the tiny
    ViT (the official ``VisionTransformer`` class, these sizes) and ``bert-base-uncased`` is read from
    ``folder/tokenizer``; loading (``ImageReward.utils.load``) and ``ImageReward.score`` are the official
    ones. The package's ``__init__`` is skipped (it imports the ReFL trainer: datasets, diffusers) and
    openai ``clip`` (for the CLIP/Aesthetic scores only) is stubbed.
    """
    import importlib.util
    import types

    from PIL import Image

    ckpt = write_tiny_imagereward(Path(folder))
    sys.modules.setdefault("clip", types.ModuleType("clip"))
    spec = importlib.util.find_spec("ImageReward")
    pkg = types.ModuleType("ImageReward")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["ImageReward"] = pkg
    import ImageReward.models.BLIP.blip as blip
    import ImageReward.models.BLIP.blip_pretrain as blip_pretrain
    import ImageReward.utils as official
    from ImageReward.models.BLIP.vit import VisionTransformer

    bert = blip.BertTokenizer

    class LocalBert(bert):
        @classmethod
        def from_pretrained(cls, name, *args, **kwargs):
            assert name == "bert-base-uncased", name
            return bert.from_pretrained(str(ckpt.parent / "tokenizer"), *args, **kwargs)

    def tiny_vit(vit, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        assert vit == "large" and image_size == VIT["image_size"]
        return VisionTransformer(
            img_size=image_size,
            patch_size=VIT["patch"],
            embed_dim=VIT["width"],
            depth=VIT["depth"],
            num_heads=VIT["heads"],
            mlp_ratio=VIT["mlp_ratio"],
        ), VIT["width"]

    blip.BertTokenizer = LocalBert
    blip_pretrain.create_vit = tiny_vit
    model = official.load(str(ckpt), device="cpu", med_config=str(ckpt.parent / "med_config.json"))
    # official load is strict=False: make sure every parameter came from the file
    res = model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True), strict=False)
    assert not res.missing_keys and not res.unexpected_keys and not model.training, res
    scores = []
    for u8, prompts in image_sets():
        for img, prompt in zip(u8, prompts):
            pil = Image.fromarray(img.permute(1, 2, 0).numpy())
            s = model.score(prompt, pil)
            assert abs(s - model.score(prompt, [pil])) < 1e-6  # the list path gives the same
            scores.append(s)
    return scores


if __name__ == "__main__":
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print("OFFICIAL_SCORES =", official_scores(Path(sys.argv[1] if len(sys.argv) > 1 else "imagereward-tiny")))
