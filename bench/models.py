"""Denoisers for the benchmarks: full-size architectures with random weights, or tiny ones for a CPU smoke run.

Only the transformer is built (no text encoder, no VAE): the benches feed it
random text embeddings of the real shapes, as a pipeline would after encoding.
Random weights cost the same time as trained ones; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# Full-size configs (PixArt-XL-2, FLUX.1-dev); the tiny ones keep the block counts so presets fit.
PIXART_FULL = dict(heads=16, head_dim=72, caption_channels=4096)
PIXART_TINY = dict(heads=2, head_dim=16, caption_channels=32)
PIXART_TEXT_TOKENS = {"alpha": 120, "sigma": 300}
FLUX_FULL = dict(heads=24, head_dim=128, joint_dim=4096, pooled_dim=768, axes=(16, 56, 56), text_tokens=512)
FLUX_TINY = dict(heads=2, head_dim=16, joint_dim=32, pooled_dim=32, axes=(4, 6, 6), text_tokens=16)


@contextlib.contextmanager
def build_context(device, dtype):
    """Parameters are created directly on ``device`` in ``dtype`` (no full-precision copy first)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


@dataclass
class Denoiser:
    """A transformer plus what a sampling loop feeds it; ``call(x, i)`` evaluates step ``i``."""

    name: str
    model: torch.nn.Module
    x0: torch.Tensor
    call: Callable[[torch.Tensor, int], torch.Tensor]
    steps: int
    unit_modules: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    timesteps: torch.Tensor | None = None  # the scheduler's timesteps tensor the calls take views of

    def loop(self, pre_step: Callable[[int], None] | None = None) -> torch.Tensor:
        """One image's denoising loop: ``steps`` model calls, each feeding the next (an Euler-like update)."""
        x = self.x0.clone()
        for i in range(self.steps):
            if pre_step is not None:
                pre_step(i)
            out = self.call(x, i)
            x = x - 0.05 * out[:, : x.shape[1]].to(x.dtype)
        return x


def diffusers_pixart(
    variant: str, res: int, *, tiny: bool, device, dtype, steps: int = 20, cfg: bool = True, seed: int = 0
) -> Denoiser:
    """diffusers PixArtTransformer2DModel, 28 blocks, at ``res``² (latent res/8), CFG batch 2."""
    from diffusers import PixArtTransformer2DModel

    from ecad_core.diffusers.adapters import find_diffusers_units

    c = PIXART_TINY if tiny else PIXART_FULL
    sample = res // 8
    torch.manual_seed(seed)
    kw = dict(
        num_attention_heads=c["heads"],
        attention_head_dim=c["head_dim"],
        in_channels=4,
        out_channels=8,
        num_layers=28,
        cross_attention_dim=c["heads"] * c["head_dim"],
        caption_channels=c["caption_channels"],
        sample_size=sample,
        patch_size=2,
        norm_type="ada_norm_single",
        num_embeds_ada_norm=1000,
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        attention_bias=True,
        activation_fn="gelu-approximate",
        use_additional_conditions=variant == "alpha" and sample == 128,
    )
    if variant == "sigma":
        kw["interpolation_scale"] = max(sample / 64, 0.5)
    with torch.device(device):
        model = PixArtTransformer2DModel(**kw).to(dtype).eval()
    b = 2 if cfg else 1
    g = torch.Generator(device="cpu").manual_seed(seed)
    L = PIXART_TEXT_TOKENS[variant]
    x0 = torch.randn(b, 4, sample, sample, generator=g).to(device, dtype)
    text = torch.randn(b, L, c["caption_channels"], generator=g).to(device, dtype)
    mask = torch.ones(b, L, device=device, dtype=torch.long)
    mask[:, L // 4 :] = 0  # a short prompt: most tokens are padding, as in the pipelines
    timesteps = torch.linspace(999, 1, steps).round().long().to(device)
    added = {"resolution": None, "aspect_ratio": None}
    if model.use_additional_conditions:
        added = {
            "resolution": torch.tensor([[res, res]] * b, device=device, dtype=dtype),
            "aspect_ratio": torch.tensor([[1.0]] * b, device=device, dtype=dtype),
        }

    def call(x, i):
        # as PixArtAlphaPipeline: the timestep is the scheduler's entry expanded to the batch
        return model(
            x,
            encoder_hidden_states=text,
            encoder_attention_mask=mask,
            timestep=timesteps[i].expand(b),
            added_cond_kwargs=added,
            return_dict=False,
        )[0]

    units = find_diffusers_units(model)
    return Denoiser(
        f"diffusers PixArt-{variant} {res}²",
        model,
        x0,
        call,
        steps,
        units.modules,
        {"tokens": (sample // 2) ** 2, "batch": b, "text_tokens": L},
        timesteps,
    )


def diffusers_flux(res: int, *, tiny: bool, device, dtype, steps: int = 20, seed: int = 0) -> Denoiser:
    """diffusers FluxTransformer2DModel (FLUX.1-dev: 19 double + 38 single blocks) at ``res``², batch 1."""
    from diffusers import FluxTransformer2DModel

    from ecad_core.diffusers.adapters import find_diffusers_units

    c = FLUX_TINY if tiny else FLUX_FULL
    torch.manual_seed(seed)
    with build_context(device, dtype):
        model = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            out_channels=None,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=c["head_dim"],
            num_attention_heads=c["heads"],
            joint_attention_dim=c["joint_dim"],
            pooled_projection_dim=c["pooled_dim"],
            guidance_embeds=True,
            axes_dims_rope=c["axes"],
        ).eval()
    side = res // 16
    n_img, L = side * side, c["text_tokens"]
    g = torch.Generator(device="cpu").manual_seed(seed)
    x0 = torch.randn(1, n_img, 64, generator=g).to(device, dtype)
    text = torch.randn(1, L, c["joint_dim"], generator=g).to(device, dtype)
    pooled = torch.randn(1, c["pooled_dim"], generator=g).to(device, dtype)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    img_ids = img_ids.reshape(n_img, 3).to(device, dtype)
    txt_ids = torch.zeros(L, 3, device=device, dtype=dtype)
    guidance = torch.full((1,), 3.5, device=device, dtype=torch.float32)
    timesteps = torch.linspace(1000, 1000 / steps, steps).to(device)

    def call(x, i):
        # as FluxPipeline: timestep = t.expand(batch).to(dtype) / 1000
        t = timesteps[i].expand(1).to(x.dtype) / 1000
        return model(
            hidden_states=x,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=t,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]

    units = find_diffusers_units(model)
    return Denoiser(
        f"diffusers FLUX.1-dev {res}²",
        model,
        x0,
        call,
        steps,
        units.modules,
        {"tokens": n_img, "batch": 1, "text_tokens": L},
        timesteps,
    )
