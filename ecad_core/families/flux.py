"""FLUX.1 (dev, schnell): double-stream blocks (joint attention, image and text feed-forward) and single-stream
blocks (attention, MLP input projection, output projection)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Variant, count_blocks, timestep_embedding_macs
from .chroma import chroma_keys, is_chroma_config
from .flux2 import flux2_keys, is_flux2_config
from .flux_structure import FluxStructure

_FLUX1 = dict(hidden=3072, heads=24, depth=19, single_depth=38, latent_channels=16, out_channels=16, pooled_dim=768)


class Flux(FluxStructure):
    name = "flux"
    label = "FLUX"
    order = 20
    variants = (
        Variant("flux-dev", "FLUX.1-dev", {**_FLUX1, "text_tokens": 512, "guidance_embeds": True}),
        Variant("flux-schnell", "FLUX.1-schnell", {**_FLUX1, "text_tokens": 256, "guidance_embeds": False}),
    )
    default_variant = "flux-dev"
    ecad_format = True

    def detect(self, keys, key_set):
        if flux2_keys(key_set) or chroma_keys(key_set):  # FLUX-class, not FLUX.1: their own families
            return None
        # ComfyUI / original; not HunyuanVideo (token refiner)
        if (
            "double_blocks.0.img_attn.qkv.weight" in key_set
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
        if is_flux2_config(c) or is_chroma_config(c):  # their own families
            return None
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
        N, T, D = n_image, n_text, a.hidden
        pooled = (a.pooled_dim * D + D * D) if a.pooled_dim else 0
        fixed = {
            "x_embedder": N * a.token_in * D,
            "context_embedder": T * a.caption_channels * D,
            "time_text_embedding": timestep_embedding_macs(a) * (2 if a.guidance_embeds else 1) + pooled,
            # adaLN-Zero linears run every step: gates apply fresh to cached outputs
            "block_modulation": a.depth * 2 * 6 * D * D + a.single_depth * 3 * D * D,
            "final_layer": 2 * D * D + N * D * a.token_out,
        }
        return self.block_macs(N, T, D, a.ff_dim, attention), fixed
