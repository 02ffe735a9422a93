"""Trained test models: a tiny PixArt and a tiny FLUX transformer (diffusers classes) trained by this project on
procedurally drawn coloured shapes with text captions, so that caching costs real quality (random-weight models
make every schedule look free).

Data (``draw``): 32x32 RGB images of one shape (circle or square) of one colour at one of five places on a plain
background, captioned "a red circle at the top left on a black background". Nothing is downloaded.

Caption encoder (``encode``): no language model. Each word of the small vocabulary (``VOCAB``) gets a fixed row of
a seeded random table (``torch.Generator`` seeded with ``TEXT_SEED``, N(0, 1), ``TEXT_DIM`` wide) plus a fixed
seeded row per position (so "red ... on a blue background" differs from "blue ... on a red background"); captions
are padded to ``MAX_TOKENS`` with a pad word. FLUX's pooled embedding is the mean over the caption's tokens.

Models work in pixel space (no VAE), trained as rectified flow: x_t = (1 - t) x0 + t noise, the model predicts
noise - x0; ``sample`` integrates it with Euler steps from t = 1 to 0. PixArt gets t * 1000 as its timestep,
FLUX gets t (its embedder multiplies by 1000 itself). Weights: ``bench/weights/*.safetensors`` (fp16, loaded as
fp32), written by ``scripts/train_shapes.py``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

WEIGHTS = Path(__file__).resolve().parent / "weights"
SIZE = 32
TEXT_DIM = 32
TEXT_SEED = 1234
MAX_TOKENS = 12

COLORS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.2, 0.95),
    "yellow": (0.95, 0.9, 0.1),
}
BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0), "gray": (0.5, 0.5, 0.5)}
SHAPES = ("circle", "square")
PLACES = {
    "top left": (0.27, 0.27),
    "top right": (0.27, 0.73),
    "bottom left": (0.73, 0.27),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
VOCAB = ("<pad>", "a", "at", "the", "on", "background", "top", "bottom", "left", "right", "center",
         *COLORS, *(b for b in BACKGROUNDS if b not in COLORS), *SHAPES)  # fmt: skip
FAMILIES = ("pixart", "flux")


def caption(color: str, shape: str, place: str, background: str) -> str:
    return f"a {color} {shape} at the {place} on a {background} background"


def parse(text: str) -> tuple[str, str, str, str]:
    """(color, shape, place, background) of a caption written by ``caption``."""
    words = text.split()
    if len(words) < 9 or words[0] != "a" or words[-1] != "background":
        raise ValueError(f"not a shapes caption: {text!r}")
    place = " ".join(words[5:-4])
    return words[1], words[2], place, words[-2]


def all_captions() -> list[str]:
    return [caption(c, s, p, b) for c in COLORS for s in SHAPES for p in PLACES for b in BACKGROUNDS]


# the search calibrates on these; the benchmark's held-out set has other colour/shape/place/background mixes
CALIBRATION = [
    caption("red", "circle", "top left", "black"),
    caption("blue", "square", "bottom right", "white"),
    caption("yellow", "circle", "center", "gray"),
    caption("green", "square", "top right", "black"),
]
HELD_OUT = [
    caption("green", "circle", "bottom left", "white"),
    caption("red", "square", "center", "gray"),
    caption("blue", "circle", "top right", "gray"),
    caption("yellow", "square", "bottom left", "black"),
    caption("red", "circle", "bottom right", "white"),
    caption("blue", "square", "top left", "black"),
]


def draw(color: str, shape: str, place: str, background: str, jitter: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """The image [3, SIZE, SIZE] in [0, 1] of a caption's parts (``jitter``: centre offset in pixels)."""
    cy, cx = PLACES[place]
    cy, cx = cy * SIZE + jitter[0], cx * SIZE + jitter[1]
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    r = SIZE * 0.19
    if shape == "circle":
        mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
    else:
        half = r * 0.85
        mask = ((ys - cy).abs() <= half) & ((xs - cx).abs() <= half)
    img = torch.tensor(BACKGROUNDS[background]).view(3, 1, 1).expand(3, SIZE, SIZE).clone()
    fg = torch.tensor(COLORS[color]).view(3, 1, 1).expand(3, SIZE, SIZE)
    return torch.where(mask, fg, img)


def batch(n: int, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
    """``n`` random training images in [-1, 1] and their captions."""
    imgs, caps = [], []
    for _ in range(n):
        c, s, p, b = (
            rng.choice(list(COLORS)),
            rng.choice(SHAPES),
            rng.choice(list(PLACES)),
            rng.choice(list(BACKGROUNDS)),
        )
        imgs.append(draw(c, s, p, b, (rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5))) * 2 - 1)
        caps.append(caption(c, s, p, b))
    return torch.stack(imgs), caps


# -- caption encoder -------------------------------------------------------------------
_TABLES: dict[str, torch.Tensor] = {}


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    if not _TABLES:
        g = torch.Generator().manual_seed(TEXT_SEED)
        _TABLES["words"] = torch.randn(len(VOCAB), TEXT_DIM, generator=g)
        _TABLES["positions"] = 0.5 * torch.randn(MAX_TOKENS, TEXT_DIM, generator=g)
    return _TABLES["words"], _TABLES["positions"]


def encode(captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B, MAX_TOKENS, TEXT_DIM], pooled [B, TEXT_DIM]) of ``captions``; unknown words are refused."""
    words, positions = _tables()
    index = {w: i for i, w in enumerate(VOCAB)}
    rows, pooled = [], []
    for text in captions:
        toks = text.split()
        bad = [w for w in toks if w not in index]
        if bad or len(toks) > MAX_TOKENS:
            raise ValueError(f"caption {text!r}: unknown words {bad} or longer than {MAX_TOKENS} words")
        ids = [index[w] for w in toks] + [0] * (MAX_TOKENS - len(toks))
        e = words[ids] + positions
        rows.append(e)
        pooled.append(e[: len(toks)].mean(0))
    return torch.stack(rows), torch.stack(pooled)


# -- models ----------------------------------------------------------------------------
PIXART_PATCH = 4
FLUX_PACK = 4  # FLUX sees 4x4 pixel patches packed into channels (patch_size 1 in its config)


def build(family: str):
    """The untrained transformer of ``family`` (``pixart`` or ``flux``), seeded."""
    torch.manual_seed(0)
    if family == "pixart":
        from diffusers import PixArtTransformer2DModel

        return PixArtTransformer2DModel(
            num_attention_heads=4,
            attention_head_dim=16,
            in_channels=3,
            out_channels=3,
            num_layers=6,
            cross_attention_dim=64,
            caption_channels=TEXT_DIM,
            sample_size=SIZE,
            patch_size=PIXART_PATCH,
            norm_type="ada_norm_single",
            num_embeds_ada_norm=1000,
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            attention_bias=True,
            activation_fn="gelu-approximate",
            use_additional_conditions=False,
        )
    if family == "flux":
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=3 * FLUX_PACK * FLUX_PACK,
            out_channels=None,
            num_layers=2,
            num_single_layers=4,
            attention_head_dim=16,
            num_attention_heads=4,
            joint_attention_dim=TEXT_DIM,
            pooled_projection_dim=TEXT_DIM,
            guidance_embeds=False,
            axes_dims_rope=(4, 6, 6),
        )
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def cost_size(family: str) -> int:
    """The image side the MACs model (latent /8, the config's patch) needs to count this model's 64 tokens."""
    return 8 * (SIZE // PIXART_PATCH * PIXART_PATCH if family == "pixart" else SIZE // FLUX_PACK)


def _pack(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    p = FLUX_PACK
    x = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def _unpack(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    p, side = FLUX_PACK, SIZE // FLUX_PACK
    x = x.view(b, side, side, 3, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 3, SIZE, SIZE)


def _img_ids() -> torch.Tensor:
    side = SIZE // FLUX_PACK
    ids = torch.zeros(side, side, 3)
    ids[..., 1] = torch.arange(side)[:, None]
    ids[..., 2] = torch.arange(side)[None, :]
    return ids.reshape(-1, 3)


def velocity(model, family: str, x: torch.Tensor, t: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor]):
    """The model's prediction of noise - x0 at images ``x`` [B, 3, SIZE, SIZE], times ``t`` [B] in [0, 1]."""
    tokens, pooled = text
    if family == "pixart":
        return model(
            hidden_states=x,
            encoder_hidden_states=tokens,
            timestep=t * 1000,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
    out = model(
        hidden_states=_pack(x),
        encoder_hidden_states=tokens,
        pooled_projections=pooled,
        timestep=t,
        img_ids=_img_ids(),
        txt_ids=torch.zeros(tokens.shape[1], 3),
        return_dict=False,
    )[0]
    return _unpack(out)


def weights_path(family: str) -> Path:
    return WEIGHTS / f"shapes-{family}.safetensors"


def load(family: str, path: str | Path | None = None):
    """The trained ``family`` transformer (eval mode, fp32) from its safetensors file."""
    from safetensors.torch import load_file

    model = build(family)
    state = load_file(str(path or weights_path(family)))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def save(model, family: str, path: str | Path, info: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"ecad_trained": json.dumps({"family": family, **info})})


def timesteps(steps: int, shift: float = 1.0) -> list[float]:
    """Euler's times from 1 to 0 (``steps`` + 1 values); ``shift`` > 1 spends more steps at high noise."""
    ts = [1 - i / steps for i in range(steps + 1)]
    return [shift * t / (1 + (shift - 1) * t) for t in ts]


@torch.no_grad()
def sample(
    model,
    family: str,
    captions: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    *,
    step_callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Images [B, 3, SIZE, SIZE] in [-1, 1] for ``captions`` (one seed each: its own noise generator)."""
    noise = torch.stack([torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    text = encode(captions)
    x = noise
    ts = timesteps(steps)
    for i in range(steps):
        if step_callback is not None:
            step_callback(i)
        t = torch.full((x.shape[0],), ts[i])
        v = velocity(model, family, x, t, text)
        x = x + (ts[i + 1] - ts[i]) * v
    return x.clamp(-1, 1)


# -- a pixel-statistics classifier of generated images -----------------------------------
def classify(img: torch.Tensor) -> dict:
    """What an image [3, SIZE, SIZE] in [-1, 1] shows: background (median border colour), the foreground's
    nearest colour name, its place (centroid), its shape (fill of its bounding box: a circle fills ~0.79)."""
    x = (img.float().clamp(-1, 1) + 1) / 2
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)
    bg = border.median(dim=1).values

    def nearest(rgb, table):
        return min(table, key=lambda k: float(((torch.tensor(table[k]) - rgb) ** 2).sum()))

    diff = (x - bg.view(3, 1, 1)).abs().sum(0)
    mask = diff > 0.45
    out = {"background": nearest(bg, BACKGROUNDS), "pixels": int(mask.sum())}
    if mask.sum() < 8:
        return {**out, "color": None, "place": None, "shape": None}
    fg = x[:, mask].median(dim=1).values
    ys, xs = torch.nonzero(mask, as_tuple=True)
    cy, cx = (ys.float().mean() + 0.5) / SIZE, (xs.float().mean() + 0.5) / SIZE
    place = min(PLACES, key=lambda p: (PLACES[p][0] - float(cy)) ** 2 + (PLACES[p][1] - float(cx)) ** 2)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = float(mask.sum()) / float(box)
    shape = "square" if fill > 0.89 else "circle"
    return {**out, "color": nearest(fg, COLORS), "place": place, "shape": shape, "fill": round(fill, 3)}


def matches(img: torch.Tensor, text: str) -> bool:
    c, s, p, b = parse(text)
    got = classify(img)
    return (got["color"], got["shape"], got["place"], got["background"]) == (c, s, p, b)


def fraction_matching(images: torch.Tensor, captions: Sequence[str]) -> float:
    return sum(matches(im, c) for im, c in zip(images, captions)) / max(len(captions), 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((((a.float() + 1) / 2 - (b.float() + 1) / 2) ** 2).mean())
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf
