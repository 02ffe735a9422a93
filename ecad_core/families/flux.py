"""FLUX.1 (dev, schnell): double-stream blocks (joint attention, image and text feed-forward) and single-stream
blocks (attention, MLP input projection, output projection)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Family, Variant, count_blocks, timestep_embedding_macs

_FLUX1 = dict(hidden=3072, heads=24, depth=19, single_depth=38, latent_channels=16, out_channels=16, pooled_dim=768)


class Flux(Family):
    name = "flux"
    label = "FLUX"
    order = 20
    groups = (
        ("", ("full_attn", "full_ff", "full_ff_context")),
        ("single_", ("single_attn", "single_proj_mlp", "single_proj_out")),
    )
    group_names = ("double_blocks", "single_blocks")
    variants = (
        Variant("flux-dev", "FLUX.1-dev", {**_FLUX1, "text_tokens": 512, "guidance_embeds": True}),
        Variant("flux-schnell", "FLUX.1-schnell", {**_FLUX1, "text_tokens": 256, "guidance_embeds": False}),
    )
    default_variant = "flux-dev"
    ecad_format = True
    colors = {
        "full_attn": (0.95, 0.55, 0.2),
        "full_ff": (0.55, 0.85, 0.35),
        "full_ff_context": (0.3, 0.7, 0.95),
        "single_attn": (0.95, 0.4, 0.5),
        "single_proj_mlp": (0.8, 0.75, 0.3),
        "single_proj_out": (0.6, 0.5, 0.95),
    }
    tgate_components = ("full_ff_context", "full_attn")  # the text-stream feed-forward stands for cross-attention
    attention_components = ("full_attn", "single_attn")

    def detect(self, keys, key_set):
        # ComfyUI / original; not HunyuanVideo (token refiner) nor Chroma (distilled guidance layer)
        if (
            "double_blocks.0.img_attn.qkv.weight" in key_set
            and "distilled_guidance_layer.in_proj.weight" not in key_set
            and "img_in.weight" in key_set
            and not any(k.startswith("txt_in.individual_token_refiner") for k in keys)
        ):
            return (count_blocks(keys, "double_blocks."), count_blocks(keys, "single_blocks.")), "flux"
        if "context_embedder.weight" in key_set:  # diffusers
            single = count_blocks(keys, "single_transformer_blocks.")
            if single:
                return (count_blocks(keys, "transformer_blocks."), single), "flux"
        return None

    def variant_of_ecad_config(self, config):
        return "flux-dev"  # every FLUX schedule in the reference repo is for FLUX.1-dev

    def arch_from_diffusers_config(self, c: Mapping[str, Any], name, text_tokens):
        if not ("num_single_layers" in c or "joint_attention_dim" in c or "Flux" in str(c.get("_class_name", ""))):
            return None
        heads, head_dim = int(c["num_attention_heads"]), int(c["attention_head_dim"])
        pack = 2  # the pipeline packs 2x2 latent pixels into one token
        cin = int(c.get("in_channels", 64))
        cout = int(c.get("out_channels") or cin)
        if cin % pack**2 or cout % pack**2:
            raise ValueError(f"FLUX config: in/out channels {cin}/{cout} are not multiples of {pack**2}")
        if int(c.get("patch_size", 1)) != 1:
            raise ValueError("FLUX config: only patch_size 1 (2x2 packing in the pipeline) is supported")
        guidance = bool(c.get("guidance_embeds", False))
        return dict(
            name=name or ("flux-dev" if guidance else "flux-schnell") + "-config",
            hidden=heads * head_dim,
            heads=heads,
            depth=int(c.get("num_layers", 19)),
            single_depth=int(c.get("num_single_layers", 38)),
            patch=pack,
            latent_channels=cin // pack**2,
            out_channels=cout // pack**2,
            caption_channels=int(c.get("joint_attention_dim", 4096)),
            text_tokens=text_tokens or (512 if guidance else 256),
            pooled_dim=int(c.get("pooled_projection_dim", 768)),
            guidance_embeds=guidance,
        )

    def step_macs(self, a, n_image, n_text, attention, height, width):
        N, T, D, F = n_image, n_text, a.hidden, a.ff_dim
        L = N + T  # joint attention over image and text tokens
        joint = 2 * L * L * D if attention else 0
        double = [
            4 * L * D * D + joint,  # q, k, v, out for both streams
            2 * N * D * F,  # image feed-forward
            2 * T * D * F,  # text feed-forward
        ]
        single = [
            3 * L * D * D + joint,  # q, k, v (the output projection is fused into proj_out)
            L * D * F,  # proj_mlp
            L * (D + F) * D,  # proj_out over [attn, mlp]
        ]
        pooled = (a.pooled_dim * D + D * D) if a.pooled_dim else 0
        fixed = {
            "x_embedder": N * a.token_in * D,
            "context_embedder": T * a.caption_channels * D,
            "time_text_embedding": timestep_embedding_macs(a) * (2 if a.guidance_embeds else 1) + pooled,
            # adaLN-Zero linears run every step: gates apply fresh to cached outputs
            "block_modulation": a.depth * 2 * 6 * D * D + a.single_depth * 3 * D * D,
            "final_layer": 2 * D * D + N * D * a.token_out,
        }
        return [double, single], fixed
