"""Chroma (Chroma1-HD and its FLUX.1-schnell-derived kin): FLUX.1's double- and single-stream blocks without their
own modulation linears; every block's shift / scale / gate come from one distilled guidance network (the
"approximator") run once per step over a fixed set of modulation indices. Units as FLUX.1's, in their own layout:
the blocks see other modulations than FLUX.1's, so FLUX schedules are refused on Chroma and the other way round."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Variant, count_blocks
from .flux_structure import FluxStructure

# ComfyUI runs the approximator over 344 modulation vectors whatever the depth (19 x 12 + 38 x 3 + 2, hard-coded);
# diffusers counts them from its config (the same 344 for Chroma1's 19 + 38 blocks)
APPROXIMATOR = dict(approximator_in=64, approximator_hidden=5120, approximator_layers=5, mod_vectors=344)
_CHROMA = dict(
    hidden=3072,
    heads=24,
    depth=19,
    single_depth=38,
    latent_channels=16,
    out_channels=16,
    pooled_dim=0,
    caption_channels=4096,
    text_tokens=512,
    guidance_embeds=False,
    extra=APPROXIMATOR,
)


def chroma_keys(key_set: set[str]) -> bool:
    """Whether these tensor names are Chroma's (ComfyUI / original, or diffusers): its distilled guidance layer."""
    return any(
        k in key_set
        for k in (
            "distilled_guidance_layer.in_proj.weight",
            "distilled_guidance_layer.norms.0.scale",
            "distilled_guidance_layer.0.norms.0.scale",
        )
    )


def is_chroma_config(c: Mapping[str, Any]) -> bool:
    """Whether a diffusers transformer config is Chroma's (a fresh model's config has no ``_class_name``)."""
    return "Chroma" in str(c.get("_class_name", "")) or "approximator_num_channels" in c


class Chroma(FluxStructure):
    name = "chroma"
    label = "Chroma"
    order = 19  # before FLUX.1 (20): ComfyUI's Chroma subclasses nothing of FLUX but its blocks
    variants = (Variant("chroma", "Chroma", _CHROMA),)
    default_variant = "chroma"

    def detect(self, keys, key_set):
        if not chroma_keys(key_set):
            return None
        if any(k.startswith("nerf_blocks.") for k in keys):
            return None  # Chroma Radiance (pixel space): ComfyUI's block-level path
        if "double_blocks.0.img_attn.qkv.weight" in key_set:  # ComfyUI / original
            return (count_blocks(keys, "double_blocks."), count_blocks(keys, "single_blocks.")), "chroma"
        if "context_embedder.weight" in key_set:  # diffusers
            counts = count_blocks(keys, "transformer_blocks."), count_blocks(keys, "single_transformer_blocks.")
            return counts, "chroma"
        return None

    def arch_from_diffusers_config(self, c: Mapping[str, Any], name, text_tokens):
        if not is_chroma_config(c):
            return None
        if int(c.get("patch_size", 1)) != 1:
            raise ValueError("Chroma config: only patch_size 1 (2x2 latent packing in the pipeline) is supported")
        heads, head_dim = int(c.get("num_attention_heads", 24)), int(c.get("attention_head_dim", 128))
        depth, single = int(c.get("num_layers", 19)), int(c.get("num_single_layers", 38))
        cin = int(c.get("in_channels", 64))
        cout = int(c.get("out_channels") or cin)
        if cin % 4 or cout % 4:
            raise ValueError(f"Chroma config: in/out channels {cin}/{cout} are not multiples of 4")
        return dict(
            name=name or "chroma-config",
            hidden=heads * head_dim,
            heads=heads,
            depth=depth,
            single_depth=single,
            patch=2,
            latent_channels=cin // 4,
            out_channels=cout // 4,
            caption_channels=int(c.get("joint_attention_dim", 4096)),
            text_tokens=text_tokens or 512,
            pooled_dim=0,
            guidance_embeds=False,
            extra=dict(
                approximator_in=int(c.get("approximator_num_channels", 64)),
                approximator_hidden=int(c.get("approximator_hidden_dim", 5120)),
                approximator_layers=int(c.get("approximator_layers", 5)),
                mod_vectors=3 * single + 12 * depth + 2,
            ),
        )

    def step_macs(self, a, n_image, n_text, attention, height, width):
        N, T, D = n_image, n_text, a.hidden
        x = {**APPROXIMATOR, **a.extra}
        h = x["approximator_hidden"]
        fixed = {
            "x_embedder": N * a.token_in * D,
            "context_embedder": T * a.caption_channels * D,
            # in_proj, the residual MLPs, out_proj over every modulation vector
            "approximator": x["mod_vectors"]
            * (x["approximator_in"] * h + x["approximator_layers"] * 2 * h * h + h * D),
            "final_layer": N * D * a.token_out,
        }
        return self.block_macs(N, T, D, a.ff_dim, attention), fixed  # the blocks as FLUX.1's
