"""Stable Diffusion 3 / 3.5 (MMDiT): joint blocks, each with a joint attention over text and image tokens, an image
MLP and a text MLP. The last block is "pre-only" on the text side (its text stream ends there: no text output
projection, no text MLP), so it is a group of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Family, Variant, count_blocks, timestep_embedding_macs

# MMDiT's width is 64 x depth. Prompts: CLIP-L/G (77 tokens) and T5 (77, ComfyUI's minimum) side by side: 154 tokens.
_MMDIT = dict(patch=2, latent_channels=16, out_channels=16, caption_channels=4096, pooled_dim=2048, text_tokens=154)


class SD3(Family):
    name = "sd3"
    label = "SD3"
    order = 16  # before FLUX, whose diffusers-config reader takes any config with a joint_attention_dim
    groups = (("", ("attn", "ff", "ff_context")), ("last_", ("attn", "ff")))
    group_names = ("joint_blocks", "last_block")
    variants = (
        Variant("sd3-medium", "SD3 Medium", {**_MMDIT, "hidden": 1536, "heads": 24, "depth": 23, "single_depth": 1}),
        Variant("sd3.5-large", "SD3.5 Large", {**_MMDIT, "hidden": 2432, "heads": 38, "depth": 37, "single_depth": 1}),
    )
    default_variant = "sd3-medium"
    colors = {"attn": (0.95, 0.55, 0.2), "ff": (0.55, 0.85, 0.35), "ff_context": (0.3, 0.7, 0.95)}
    # the text-stream MLP stands for cross-attention (as FLUX's full_ff_context)
    tgate_components = ("ff_context", "attn")
    attention_components = ("attn",)

    def arch_counts(self, arch):
        return (arch.depth, arch.single_depth)

    def check_arch(self, arch):
        if arch.single_depth != 1:
            return "SD3 has exactly one last (pre-only) block: single_depth must be 1"
        return None

    def detect(self, keys, key_set):
        if "joint_blocks.0.context_block.attn.qkv.weight" in key_set:  # ComfyUI / original
            n = count_blocks(keys, "joint_blocks.")
            if n >= 2:
                return (n - 1, 1), "sd3"
        if "pos_embed.proj.weight" in key_set and "context_embedder.weight" in key_set:  # diffusers
            n = count_blocks(keys, "transformer_blocks.")
            if n >= 2 and not count_blocks(keys, "single_transformer_blocks."):
                return (n - 1, 1), "sd3"
        return None

    def arch_from_diffusers_config(self, c: Mapping[str, Any], name, text_tokens):
        ours = "caption_projection_dim" in c and "pos_embed_max_size" in c  # a model built in code has no _class_name
        if "SD3Transformer2DModel" not in str(c.get("_class_name", "")) and not ours:
            return None
        if c.get("dual_attention_layers"):
            raise ValueError("SD3 config: SD3.5 Medium's dual-attention layers are not in the cost model")
        heads, head_dim = int(c["num_attention_heads"]), int(c["attention_head_dim"])
        depth = int(c.get("num_layers", 24))
        return dict(
            name=name or "sd3-config",
            hidden=heads * head_dim,
            heads=heads,
            depth=depth - 1,
            single_depth=1,
            patch=int(c.get("patch_size", 2)),
            latent_channels=int(c.get("in_channels", 16)),
            out_channels=int(c.get("out_channels") or c.get("in_channels", 16)),
            caption_channels=int(c.get("joint_attention_dim", 4096)),
            pooled_dim=int(c.get("pooled_projection_dim", 2048)),
            text_tokens=text_tokens or 154,
        )

    def step_macs(self, a, n_image, n_text, attention, height, width):
        N, T, D, F = n_image, n_text, a.hidden, a.ff_dim
        L = N + T
        joint = 2 * L * L * D if attention else 0
        joint_block = [
            4 * L * D * D + joint,  # q, k, v and output projections of both streams + joint attention
            2 * N * D * F,  # image MLP
            2 * T * D * F,  # text MLP
        ]
        last_block = [
            3 * L * D * D + N * D * D + joint,  # the text stream only feeds q, k, v
            2 * N * D * F,
        ]
        fixed = {
            "x_embedder": N * a.token_in * D,
            "context_embedder": T * a.caption_channels * D,
            "t_embedder": timestep_embedding_macs(a),
            "y_embedder": a.pooled_dim * D + D * D,
            # adaLN linears of both streams run every step (the last text stream has 2 x D, not 6 x D)
            "block_modulation": a.depth * 2 * 6 * D * D + (6 + 2) * D * D,
            "final_layer": 2 * D * D + N * D * a.token_out,
        }
        return [joint_block, last_block], fixed
