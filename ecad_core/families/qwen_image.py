"""Qwen-Image (and Qwen-Image-Edit, the same transformer): one group of dual-stream MMDiT blocks, each with a joint
attention over text and image tokens, an image feed-forward and a text feed-forward."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Family, Variant, count_blocks, timestep_embedding_macs

# Qwen-Image 20B: 60 blocks of 24 heads x 128, Qwen2.5-VL-7B text features (3584 wide), 16-channel latents packed 2x2.
# Prompts are not padded: 128 text tokens is a typical templated prompt's length.
_QWEN = dict(
    hidden=3072,
    heads=24,
    depth=60,
    patch=2,
    latent_channels=16,
    out_channels=16,
    caption_channels=3584,
    text_tokens=128,
)


class QwenImage(Family):
    name = "qwen_image"
    label = "Qwen-Image"
    order = 15  # before FLUX, whose diffusers-config reader takes any config with a joint_attention_dim
    groups = (("", ("attn", "img_mlp", "txt_mlp")),)
    group_names = ("blocks",)
    variants = (
        Variant("qwen-image", "Qwen-Image", {**_QWEN, "extra": {"ref_images": 0}}),
        # Edit appends the reference image's latent tokens (one image as large as the output) to the image stream
        Variant("qwen-image-edit", "Qwen-Image-Edit", {**_QWEN, "extra": {"ref_images": 1}}),
    )
    default_variant = "qwen-image"
    colors = {"attn": (0.95, 0.55, 0.2), "img_mlp": (0.55, 0.85, 0.35), "txt_mlp": (0.3, 0.7, 0.95)}
    # the text-stream feed-forward stands for cross-attention (as FLUX's full_ff_context)
    tgate_components = ("txt_mlp", "attn")
    attention_components = ("attn",)

    def detect(self, keys, key_set):
        # ComfyUI and diffusers name Qwen-Image's tensors alike
        if "txt_norm.weight" in key_set and "img_in.weight" in key_set:
            n = count_blocks(keys, "transformer_blocks.")
            if n and f"transformer_blocks.{n - 1}.img_mlp.net.2.weight" in key_set:
                return (n,), "qwen-image"
        return None

    def arch_from_diffusers_config(self, c: Mapping[str, Any], name, text_tokens):
        # a model built in code has no _class_name: FLUX's configs name single blocks and a pooled width
        ours = "joint_attention_dim" in c and "axes_dims_rope" in c and "num_single_layers" not in c
        if "QwenImage" not in str(c.get("_class_name", "")) and not (ours and "pooled_projection_dim" not in c):
            return None
        heads, head_dim = int(c["num_attention_heads"]), int(c["attention_head_dim"])
        patch = int(c.get("patch_size", 2))
        cin = int(c.get("in_channels", 64))
        cout = int(c.get("out_channels") or cin // patch**2)
        if cin % patch**2:
            raise ValueError(f"Qwen-Image config: in_channels {cin} is not a multiple of {patch**2}")
        return dict(
            name=name or "qwen-image-config",
            hidden=heads * head_dim,
            heads=heads,
            depth=int(c.get("num_layers", 60)),
            patch=patch,
            latent_channels=cin // patch**2,
            out_channels=cout,
            caption_channels=int(c.get("joint_attention_dim", 3584)),
            text_tokens=text_tokens or 128,
            extra={"ref_images": 0},
        )

    def step_macs(self, a, n_image, n_text, attention, height, width):
        # Edit's reference latents ride along in the image stream (as many tokens per image as the output)
        N = n_image * (1 + int(a.extra.get("ref_images", 0)))
        T, D, F = n_text, a.hidden, a.ff_dim
        L = N + T
        block = [
            4 * L * D * D + (2 * L * L * D if attention else 0),  # q, k, v, out of both streams + joint attention
            2 * N * D * F,  # image feed-forward
            2 * T * D * F,  # text feed-forward
        ]
        fixed = {
            "img_in": N * a.token_in * D,
            "txt_in": T * a.caption_channels * D,
            "time_text_embed": timestep_embedding_macs(a),
            # adaLN linears (image and text, 6 x D each) run every step: gates apply fresh to cached outputs
            "block_modulation": a.depth * 2 * 6 * D * D,
            "final_layer": 2 * D * D + N * D * a.token_out,
        }
        return [block], fixed
