"""FLUX.2 ([dev], [klein]): FLUX's double- and single-stream blocks with one modulation per stream for all blocks
(not one per block), a SiLU-gated feed-forward (mlp_ratio 3, its input projection twice as wide), no biases,
128-channel latents without 2x2 packing (the VAE is 16x). Units as FLUX.1's, in their own layout: a FLUX.1
schedule does not fit a FLUX.2 model (other modulation and MLP) and is refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Variant, count_blocks, timestep_embedding_macs
from .flux_structure import FluxStructure

# the published configs (BFL's flux2 repo, diffusers' Flux2Transformer2DModel); the text encoders' stacked
# hidden states are the caption width: Mistral Small 3.1 (dev), Qwen3 4B / 8B (klein)
_FLUX2 = dict(mlp_ratio=3.0, patch=1, vae_scale=16, latent_channels=128, out_channels=128, pooled_dim=0)
_DEV = dict(_FLUX2, hidden=6144, heads=48, depth=8, single_depth=48, caption_channels=15360, text_tokens=512)
_KLEIN4 = dict(_FLUX2, hidden=3072, heads=24, depth=5, single_depth=20, caption_channels=7680, text_tokens=512)
_KLEIN9 = dict(_FLUX2, hidden=4096, heads=32, depth=8, single_depth=24, caption_channels=12288, text_tokens=512)


def flux2_keys(key_set: set[str]) -> bool:
    """Whether these tensor names are FLUX.2's (ComfyUI / original, or diffusers)."""
    return (
        "double_stream_modulation_img.lin.weight" in key_set or "double_stream_modulation_img.linear.weight" in key_set
    )


def is_flux2_config(c: Mapping[str, Any]) -> bool:
    """Whether a diffusers transformer config is FLUX.2's (a fresh model's config has no ``_class_name``)."""
    return "Flux2" in str(c.get("_class_name", "")) or "timestep_guidance_channels" in c


class Flux2(FluxStructure):
    name = "flux2"
    label = "FLUX.2"
    order = 18  # before FLUX.1 (20): ComfyUI loads both as its Flux class
    variants = (
        Variant("flux2-dev", "FLUX.2-dev", {**_DEV, "guidance_embeds": True}),
        Variant("flux2-klein-4b", "FLUX.2-klein 4B", {**_KLEIN4, "guidance_embeds": False}),
        Variant("flux2-klein-9b", "FLUX.2-klein 9B", {**_KLEIN9, "guidance_embeds": False}),
    )
    default_variant = "flux2-dev"

    def detect(self, keys, key_set):
        if not flux2_keys(key_set):
            return None
        if "double_blocks.0.img_attn.qkv.weight" in key_set:  # ComfyUI / original
            return (count_blocks(keys, "double_blocks."), count_blocks(keys, "single_blocks.")), "flux2"
        return (count_blocks(keys, "transformer_blocks."), count_blocks(keys, "single_transformer_blocks.")), "flux2"

    def arch_from_diffusers_config(self, c: Mapping[str, Any], name, text_tokens):
        if not is_flux2_config(c):
            return None
        if int(c.get("patch_size", 1)) != 1:
            raise ValueError("FLUX.2 config: only patch_size 1 is supported")
        heads, head_dim = int(c.get("num_attention_heads", 48)), int(c.get("attention_head_dim", 128))
        cin = int(c.get("in_channels", 128))
        guidance = bool(c.get("guidance_embeds", True))
        return dict(
            name=name or ("flux2-dev" if guidance else "flux2-klein") + "-config",
            hidden=heads * head_dim,
            heads=heads,
            depth=int(c.get("num_layers", 8)),
            single_depth=int(c.get("num_single_layers", 48)),
            mlp_ratio=float(c.get("mlp_ratio", 3.0)),
            patch=1,
            vae_scale=16,
            latent_channels=cin,
            out_channels=int(c.get("out_channels") or cin),
            caption_channels=int(c.get("joint_attention_dim", 15360)),
            text_tokens=text_tokens or 512,
            pooled_dim=0,
            guidance_embeds=guidance,
        )

    def step_macs(self, a, n_image, n_text, attention, height, width):
        N, T, D = n_image, n_text, a.hidden
        fixed = {
            "x_embedder": N * a.token_in * D,
            "context_embedder": T * a.caption_channels * D,
            "time_text_embedding": timestep_embedding_macs(a) * (2 if a.guidance_embeds else 1),
            # one modulation per stream, shared by all blocks (double img, double txt: 6D each; single: 3D)
            "block_modulation": 15 * D * D,
            "final_layer": 2 * D * D + N * D * a.token_out,
        }
        return self.block_macs(N, T, D, a.ff_dim, attention, gated=True), fixed
