"""PixArt-α / PixArt-Σ: one group of blocks, each with self-attention, cross-attention and feed-forward units."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Family, Variant, count_blocks, timestep_embedding_macs

# PixArt-XL-2's numbers
_XL2 = dict(hidden=1152, heads=16, depth=28, latent_channels=4, out_channels=8)


class PixArt(Family):
    name = "pixart"
    label = "PixArt"
    order = 10
    groups = (("", ("attn1", "attn2", "ff")),)
    group_names = ("blocks",)
    variants = (
        # α pads prompts to 120 T5 tokens; micro-conditioning only in the 1024-MS checkpoint (None: by size)
        Variant("pixart-alpha", "PixArt-α", {**_XL2, "text_tokens": 120, "micro_conditioning": None}),
        # Σ: the same transformer, 300-token prompts, no micro-conditioning
        Variant("pixart-sigma", "PixArt-Σ", {**_XL2, "text_tokens": 300, "micro_conditioning": False}),
    )
    default_variant = "pixart-alpha"
    custom_arch = {"micro_conditioning": False}  # a custom PixArt is not micro-conditioned unless told
    ecad_format = True
    colors = {"attn1": (0.95, 0.55, 0.2), "attn2": (0.3, 0.7, 0.95), "ff": (0.55, 0.85, 0.35)}
    tgate_components = ("attn2", "attn1")
    attention_components = ("attn1", "attn2")

    def detect(self, keys, key_set):
        if "x_embedder.proj.weight" in key_set and "y_embedder.y_proj.fc1.weight" in key_set:  # ComfyUI / original
            n = count_blocks(keys, "blocks.")
            if n:
                return (n,), "pixart"
        if "caption_projection.linear_1.weight" in key_set:  # diffusers
            n = count_blocks(keys, "transformer_blocks.")
            if n:
                return (n,), "pixart"
        return None

    def variant_of_ecad_config(self, config):
        pipe = config.get("pipeline")
        if isinstance(pipe, dict) and pipe.get("name") == "pixart_sigma":
            return "pixart-sigma"
        return None

    def arch_from_diffusers_config(self, c: Mapping[str, Any], name, text_tokens):
        if "caption_channels" not in c and "PixArt" not in str(c.get("_class_name", "")):
            return None
        if c.get("norm_type", "ada_norm_single") != "ada_norm_single":
            raise ValueError("PixArt config: only norm_type 'ada_norm_single' is supported")
        if not c.get("caption_channels"):
            raise ValueError("PixArt config: caption_channels is missing (no caption projection)")
        heads, head_dim = int(c["num_attention_heads"]), int(c["attention_head_dim"])
        hidden = heads * head_dim
        cross = c.get("cross_attention_dim") or hidden
        if cross != hidden:
            raise ValueError(f"PixArt config: cross_attention_dim {cross} differs from the width {hidden}")
        micro = c.get("use_additional_conditions")
        if micro is None:  # diffusers' rule
            micro = int(c.get("sample_size", 128)) == 128
        cin = int(c.get("in_channels", 4))
        return dict(
            name=name or "pixart-config",
            hidden=hidden,
            heads=heads,
            depth=int(c.get("num_layers", 28)),
            patch=int(c.get("patch_size", 2)),
            latent_channels=cin,
            out_channels=int(c.get("out_channels") or cin),
            caption_channels=int(c["caption_channels"]),
            text_tokens=text_tokens or 120,
            micro_conditioning=bool(micro),
        )

    def step_macs(self, a, n_image, n_text, attention, height, width):
        N, T, D, F = n_image, n_text, a.hidden, a.ff_dim
        self_attn = 4 * N * D * D + (2 * N * N * D if attention else 0)  # q, k, v, out (+ QK^T, AV)
        cross_attn = 2 * N * D * D + 2 * T * D * D + (2 * N * T * D if attention else 0)  # q, out on image; k, v
        ff = 2 * N * D * F
        micro = a.micro_conditioning
        if micro is None:  # α: only the 1024-MS checkpoint (latent side 128) serves sizes above 512
            micro = max(height, width) > 512
        s = D // 3  # size embedders: height, width and aspect ratio, 3 rows per sample
        fixed = {
            "patch_embed": N * a.token_in * D,
            "caption_projection": T * (a.caption_channels * D + D * D),
            "timestep_embedding": timestep_embedding_macs(a) + (3 * (a.time_proj_dim * s + s * s) if micro else 0),
            "adaln_single": D * 6 * D,
            "final_layer": N * D * a.token_out,
        }
        return [[self_attn, cross_attn, ff]], fixed
