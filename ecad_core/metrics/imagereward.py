"""ImageReward (Xu et al. 2023, THUDM/ImageReward) without the ``image-reward`` package.

A self-contained port of the official scoring path (``ImageReward.score``):

* the prompt is tokenized with BLIP's tokenizer (``bert-base-uncased`` plus the
  added ``[DEC]`` and ``[ENC]`` tokens), padded/truncated to 35 tokens; the
  first token stays ``[CLS]`` (the official ``score`` does not swap in ``[ENC]``);
* the image is resized (shorter side, bicubic, PIL), center-cropped, scaled to
  [0, 1] and normalized with CLIP's mean/std, exactly as torchvision's
  ``Resize``/``CenterCrop``/``ToTensor``/``Normalize`` do on a PIL image;
* BLIP's ViT (timm layout: pre-norm blocks, qkv bias, LayerNorm eps 1e-6, exact
  GELU, final norm over all tokens incl. the class token) encodes the image;
* BLIP's ``med.py`` BERT (word + absolute position embeddings, no token types,
  each layer self-attention, cross-attention to all image tokens, feed-forward;
  no pooler) encodes the prompt; the hidden state of the first token goes
  through the reward MLP (five linear layers, no activations), normalized with
  the official mean and std.

Parameter names are those of the official model (``blip.visual_encoder.*``,
``blip.text_encoder.*``, ``mlp.layers.*``), so ``ImageReward.pt`` loads without a
key mapping, with strict key and shape checks. Vision dimensions come from the
state dict; the text configuration from ``med_config.json`` beside the
checkpoint, else BLIP's defaults (which must then fit the checkpoint). Nothing
is downloaded. ``tests/test_imagereward.py`` compares the scores with the
official implementation's on a small random checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import MetricUnavailable, offline

CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
MAX_TEXT_LEN = 35  # ImageReward.score: tokenizer(..., max_length=35)
REWARD_MEAN = 0.16717362830052426  # ImageReward.mean / .std
REWARD_STD = 1.0333394966054072
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_HEAD_DIM = 64  # every BLIP ViT: base 768/12, large 1024/16
MLP_WIDTHS = (1024, 128, 64, 16, 1)  # ImageReward's MLP(768): Linear layers 0, 2, 4, 6, 7 of mlp.layers

# BLIP's configs/med_config.json, the file THUDM/ImageReward ships: BERT-base with cross-attention.
MED_DEFAULTS = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "vocab_size": 30524,
    "pad_token_id": 0,
    "add_cross_attention": True,
    "position_embedding_type": "absolute",
}
# In the official model's state dict but unused by scoring: BLIP's contrastive projections and
# BERT's position_ids buffer. Accepted when present, ignored.
UNUSED_KEYS = frozenset(
    {
        "blip.vision_proj.weight",
        "blip.vision_proj.bias",
        "blip.text_proj.weight",
        "blip.text_proj.bias",
        "blip.text_encoder.embeddings.position_ids",
    }
)
TOKENIZER_DIRS = ("tokenizer", "bert-base-uncased")
TOKENIZER_HUB_IDS = ("bert-base-uncased", "google-bert/bert-base-uncased")

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


# -- vision: BLIP's ViT (timm VisionTransformer layout) -------------------------------------------
class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _VitAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _VitMlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _VitBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = _VitAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _VitMlp(width, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlipVit(nn.Module):
    """BLIP's ``VisionTransformer``: returns the normalized tokens [N, 1 + patches, width]."""

    def __init__(self, image_size: int, patch: int, width: int, depth: int, heads: int, hidden: int):
        super().__init__()
        self.image_size = image_size
        self.patch_embed = _PatchEmbed(patch, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, width))
        self.blocks = nn.ModuleList(_VitBlock(width, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed[:, : x.shape[1] + 1]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# -- text: BLIP's med.py BertModel (encoder with cross-attention, no pooler) ------------------------
class _BertEmbeddings(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        h = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], h, padding_idx=cfg["pad_token_id"])
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos)[None])


class _BertSelfAttention(nn.Module):
    def __init__(self, cfg: dict, kv_width: int):
        super().__init__()
        h = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(kv_width, h)
        self.value = nn.Linear(kv_width, h)

    def _split(self, x):
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x, context, mask):
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(x.shape)


class _BertOutput(nn.Module):  # BertSelfOutput and BertOutput: dense, residual, LayerNorm
    def __init__(self, cfg: dict, width_in: int):
        super().__init__()
        self.dense = nn.Linear(width_in, cfg["hidden_size"])
        self.LayerNorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _BertAttention(nn.Module):
    def __init__(self, cfg: dict, kv_width: int):
        super().__init__()
        self.self = _BertSelfAttention(cfg, kv_width)
        self.output = _BertOutput(cfg, cfg["hidden_size"])

    def forward(self, x, context, mask):
        return self.output(self.self(x, context, mask), x)


class _BertIntermediate(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.act = _ACTIVATIONS[cfg["hidden_act"]]

    def forward(self, x):
        return self.act(self.dense(x))


class _BertLayer(nn.Module):
    def __init__(self, cfg: dict, encoder_width: int):
        super().__init__()
        self.attention = _BertAttention(cfg, cfg["hidden_size"])
        self.crossattention = _BertAttention(cfg, encoder_width)
        self.intermediate = _BertIntermediate(cfg)
        self.output = _BertOutput(cfg, cfg["intermediate_size"])

    def forward(self, x, mask, image_embeds):
        x = self.attention(x, x, mask)
        x = self.crossattention(x, image_embeds, None)  # every image token is attended (mask of ones)
        return self.output(self.intermediate(x), x)


class _BertEncoder(nn.Module):
    def __init__(self, cfg: dict, encoder_width: int):
        super().__init__()
        self.layer = nn.ModuleList(_BertLayer(cfg, encoder_width) for _ in range(cfg["num_hidden_layers"]))


class BlipTextEncoder(nn.Module):
    """BLIP's ``BertModel(add_pooling_layer=False)`` in multimodal mode: last hidden states [N, L, hidden]."""

    def __init__(self, cfg: dict, encoder_width: int):
        super().__init__()
        self.embeddings = _BertEmbeddings(cfg)
        self.encoder = _BertEncoder(cfg, encoder_width)

    def forward(self, ids, attention_mask, image_embeds):
        x = self.embeddings(ids)
        # med.py adds (1 - mask) * -10000 to the scores of padding keys
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, mask, image_embeds)
        return x


class _Blip(nn.Module):
    def __init__(self, vision: BlipVit, text: BlipTextEncoder):
        super().__init__()
        self.visual_encoder = vision
        self.text_encoder = text


class _RewardMlp(nn.Module):
    def __init__(self, width_in: int):
        super().__init__()
        w = (width_in,) + MLP_WIDTHS
        # official: Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear
        self.layers = nn.Sequential(
            nn.Linear(w[0], w[1]),
            nn.Identity(),
            nn.Linear(w[1], w[2]),
            nn.Identity(),
            nn.Linear(w[2], w[3]),
            nn.Identity(),
            nn.Linear(w[3], w[4]),
            nn.Linear(w[4], w[5]),
        )

    def forward(self, x):
        return self.layers(x)


class ImageRewardModel(nn.Module):
    """The official ``ImageReward`` module's scoring path; ``forward`` gives the normalized reward [N]."""

    def __init__(self, vision: dict, text: dict):
        super().__init__()
        self.blip = _Blip(BlipVit(**vision), BlipTextEncoder(text, vision["width"]))
        self.mlp = _RewardMlp(text["hidden_size"])

    @property
    def image_size(self) -> int:
        return self.blip.visual_encoder.image_size

    def forward(self, pixels, input_ids, attention_mask):
        image_embeds = self.blip.visual_encoder(pixels)
        hidden = self.blip.text_encoder(input_ids, attention_mask, image_embeds)
        rewards = self.mlp(hidden[:, 0, :].float())
        return ((rewards - REWARD_MEAN) / REWARD_STD).squeeze(-1)


# -- configuration from the checkpoint and med_config.json --------------------------------------------
def _keys(names, limit: int = 6) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def vision_config(sd: dict, where: Path) -> dict:
    """BLIP ViT dimensions from the state dict: width, depth, patch, image size; heads = width // 64."""
    pre = "blip.visual_encoder."
    need = [pre + k for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")]
    missing = [k for k in need if k not in sd]
    if missing:
        raise MetricUnavailable(
            f"{where} is not an ImageReward checkpoint: missing key(s) {_keys(missing)} "
            f"(expected the official state dict with blip.visual_encoder.*, "
            f"blip.text_encoder.* and mlp.layers.*)"
        )
    if sd[pre + "pos_embed"].ndim != 3 or sd[pre + "patch_embed.proj.weight"].ndim != 4:
        raise MetricUnavailable(
            f"{where}: unexpected BLIP ViT shapes (pos_embed "
            f"{tuple(sd[pre + 'pos_embed'].shape)}, patch_embed.proj.weight "
            f"{tuple(sd[pre + 'patch_embed.proj.weight'].shape)}); is this the official "
            "ImageReward.pt?"
        )
    width = sd[pre + "cls_token"].shape[-1]
    patch = sd[pre + "patch_embed.proj.weight"].shape[-1]
    tokens = sd[pre + "pos_embed"].shape[1] - 1
    grid = math.isqrt(tokens)
    depth = len({k.split(".")[3] for k in sd if k.startswith(pre + "blocks.")})
    if grid * grid != tokens or width % VIT_HEAD_DIM:
        raise MetricUnavailable(
            f"{where}: unexpected BLIP ViT shapes (pos_embed with {tokens} patch tokens, "
            f"width {width}); is this the official ImageReward.pt?"
        )
    return {
        "image_size": grid * patch,
        "patch": patch,
        "width": width,
        "depth": depth,
        "heads": width // VIT_HEAD_DIM,
        "hidden": sd[pre + "blocks.0.mlp.fc1.weight"].shape[0],
    }


def text_config(med_config: Path | None) -> dict:
    """BLIP's med_config (BertConfig fields) from ``med_config.json``, else BLIP's defaults."""
    cfg: dict[str, Any] = dict(MED_DEFAULTS)
    if med_config is not None:
        try:
            data = json.loads(med_config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise MetricUnavailable(f"cannot read {med_config}: {e}") from None
        if not isinstance(data, dict):
            raise MetricUnavailable(f"{med_config} is not a BERT config (a JSON object)")
        cfg.update({k: data[k] for k in MED_DEFAULTS if k in data})
    where = med_config or "BLIP's default med_config"
    if cfg["hidden_act"] not in _ACTIVATIONS:
        raise MetricUnavailable(
            f"{where}: hidden_act {cfg['hidden_act']!r} is not supported ({', '.join(_ACTIVATIONS)})"
        )
    if cfg["position_embedding_type"] != "absolute":
        raise MetricUnavailable(
            f"{where}: position_embedding_type {cfg['position_embedding_type']!r} is not "
            "supported (ImageReward uses 'absolute')"
        )
    if str(cfg["add_cross_attention"]).lower() not in ("true", "1"):
        raise MetricUnavailable(
            f"{where}: add_cross_attention must be true (ImageReward's text encoder attends to the image)"
        )
    if cfg["max_position_embeddings"] < MAX_TEXT_LEN:
        raise MetricUnavailable(
            f"{where}: max_position_embeddings {cfg['max_position_embeddings']} is less "
            f"than ImageReward's {MAX_TEXT_LEN} prompt tokens"
        )
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise MetricUnavailable(
            f"{where}: hidden_size {cfg['hidden_size']} is not a multiple of "
            f"num_attention_heads {cfg['num_attention_heads']}"
        )
    return cfg


def read_checkpoint(path: Path) -> dict:
    try:
        # read into memory (not mmap: the tensors become the parameters, and a file rewritten while
        # they are in use must not pull them away)
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable, truncated or not a tensor file
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise MetricUnavailable(f"cannot read the ImageReward checkpoint {path}: {first}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise MetricUnavailable(
            f"{path} is not an ImageReward checkpoint (expected a state dict of tensors, "
            "as THUDM/ImageReward's ImageReward.pt)"
        )
    return sd


def load_state(model: ImageRewardModel, sd: dict, path: Path, config_note: str) -> None:
    """Strict load: every parameter present with its shape, no unknown key (``UNUSED_KEYS`` aside)."""
    own = model.state_dict()
    given = {k: v for k, v in sd.items() if k not in UNUSED_KEYS}
    missing = own.keys() - given.keys()
    unexpected = given.keys() - own.keys()
    if missing or unexpected:
        parts = ([f"missing key(s) {_keys(missing)}"] if missing else []) + (
            [f"unexpected key(s) {_keys(unexpected)}"] if unexpected else []
        )
        raise MetricUnavailable(f"{path} does not match the ImageReward model {config_note}: {'; '.join(parts)}")
    bad = [
        f"{k} {tuple(given[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items() if given[k].shape != v.shape
    ]
    if bad:
        raise MetricUnavailable(f"{path} does not match the ImageReward model {config_note}: shape of {_keys(bad, 4)}")
    model.load_state_dict({k: v.float() for k, v in given.items()}, strict=True, assign=True)


# -- tokenizer ----------------------------------------------------------------------------------------
def _hub_cache_folder(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local Hugging Face cache if it holds vocab.txt (no network).

    Looked up file by file: transformers 5's ``from_pretrained`` of an id that is not cached can return an
    empty default tokenizer instead of failing."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        hit = try_to_load_from_cache(repo_id, "vocab.txt")
    except Exception:  # noqa: BLE001 - a malformed id or cache: not cached
        return None
    return Path(hit).parent if isinstance(hit, str) and Path(hit).is_file() else None


def load_tokenizer(checkpoint: Path, folder: str | Path | None, vocab_size: int):
    """BLIP's tokenizer from local files: ``folder``, else ``tokenizer/`` or ``bert-base-uncased/`` beside
    the checkpoint, else bert-base-uncased in the local Hugging Face cache; [DEC] and [ENC] added."""
    try:
        from transformers import BertTokenizer
    except ImportError:
        raise MetricUnavailable(
            "the ImageReward metric needs the 'transformers' package for its BERT tokenizer, "
            "which is not installed (pip install transformers)"
        ) from None
    if folder is not None:
        c = Path(folder)
        if not ((c / "vocab.txt").is_file() or (c / "tokenizer.json").is_file()):
            raise MetricUnavailable(
                f"ImageReward tokenizer not found: {c / 'vocab.txt'} does not exist (expected "
                "the bert-base-uncased tokenizer files; nothing is downloaded)"
            )
        candidates = [c]
    else:
        candidates = [checkpoint.parent / d for d in TOKENIZER_DIRS]
    tried, tok = [], None
    for c in candidates:
        if not ((c / "vocab.txt").is_file() or (c / "tokenizer.json").is_file()):
            tried.append(str(c) if not c.is_dir() else f"{c} (no vocab.txt)")
            continue
        try:
            with offline():
                tok = BertTokenizer.from_pretrained(str(c), local_files_only=True)
        except (OSError, ValueError) as e:
            raise MetricUnavailable(
                f"cannot load the ImageReward tokenizer from {c}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
            ) from None
        break
    if tok is None and folder is None:
        for hub_id in TOKENIZER_HUB_IDS:
            cached = _hub_cache_folder(hub_id)
            if cached is None:
                tried.append(f"{hub_id} in the local Hugging Face cache")
                continue
            try:
                with offline():
                    tok = BertTokenizer.from_pretrained(str(cached), local_files_only=True)
                break
            except (OSError, ValueError) as e:
                tried.append(f"{hub_id} in the local Hugging Face cache ({cached}: {str(e).strip()[:200]})")
    if tok is None:
        raise MetricUnavailable(
            "ImageReward needs the bert-base-uncased tokenizer (vocab.txt) from local files; "
            f"looked in: {'; '.join(tried)}. Put bert-base-uncased's vocab.txt (and "
            f"tokenizer_config.json) in a 'tokenizer' folder beside {checkpoint.name} "
            "(nothing is downloaded)"
        )
    # BLIP's init_tokenizer
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tok) != vocab_size:
        raise MetricUnavailable(
            f"the ImageReward tokenizer ({getattr(tok, 'name_or_path', '?')}) has "
            f"{len(tok)} tokens with [DEC] and [ENC] but the checkpoint's text encoder has "
            f"{vocab_size}; ImageReward uses bert-base-uncased (30522 + 2)"
        )
    return tok


# -- preprocessing ------------------------------------------------------------------------------------
def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> [N, 3, size, size] as the official transform gives for the 8-bit image:
    PIL bicubic resize of the shorter side to ``size`` (torchvision's ``Resize`` arithmetic), center crop
    (torchvision's rounding), /255, CLIP normalization."""
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    out = []
    for a in arr:
        im = Image.fromarray(a, "RGB")
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            im = im.resize((new_w, new_h), Image.BICUBIC)  # type: ignore[attr-defined]
        top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
        im = im.crop((left, top, left + size, top + size))
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)
        out.append(t.float().div(255).sub(mean).div(std))
    return torch.stack(out)


class ImageReward:
    """The loaded model and tokenizer; ``score(images, prompts)`` -> float64 [N] on the CPU."""

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        tokenizer: str | Path | None = None,
        batch_size: int = 16,
    ):
        p = Path(path)
        if p.is_dir():
            p = p / CHECKPOINT
        if not p.is_file():
            raise MetricUnavailable(
                f"ImageReward weights not found: {p} does not exist (the official "
                "ImageReward.pt of THUDM/ImageReward; nothing is downloaded)"
            )
        sd = read_checkpoint(p)
        vision = vision_config(sd, p)
        med = p.parent / MED_CONFIG
        text = text_config(med if med.is_file() else None)
        note = (
            f"with the text config of {med}"
            if med.is_file()
            else f"with BLIP's default text config ({MED_CONFIG} not found beside it: put the checkpoint's "
            f"{MED_CONFIG} there)"
        )
        try:
            with torch.device("meta"):  # no initialization: every parameter comes from the checkpoint
                model = ImageRewardModel(vision, text)
        except (ValueError, RuntimeError) as e:
            raise MetricUnavailable(f"cannot build the ImageReward model for {p}: {e}") from None
        load_state(model, sd, p, note)
        del sd
        self.tokenizer = load_tokenizer(p, tokenizer, text["vocab_size"])
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.batch_size = batch_size
        self.path = p

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} image(s) but {len(prompts)} prompt(s)")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        vals = []
        for i in range(0, images.shape[0], self.batch_size):
            chunk = list(prompts[i : i + self.batch_size])
            text = self.tokenizer(
                chunk, padding="max_length", truncation=True, max_length=MAX_TEXT_LEN, return_tensors="pt"
            )
            pixels = preprocess(images[i : i + self.batch_size], self.model.image_size).to(self.device)
            vals.append(
                self.model(pixels, text["input_ids"].to(self.device), text["attention_mask"].to(self.device))
                .double()
                .cpu()
            )
        return torch.cat(vals) if vals else torch.zeros(0, dtype=torch.float64)
