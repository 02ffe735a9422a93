"""Wan 2.1 / 2.2 (text-to-video; Wan 2.2 A14B's high- and low-noise experts are two models of the same layout):
one group of blocks, each with self-attention, cross-attention and feed-forward units.

Video: a block's tokens are every latent frame's patches, so each unit's output (and its cache) holds the temporal
tokens; the cost model counts ``frames`` latent frames (``Arch.extra``, default 1: a single-frame sample, what the
Evolve and Evaluate nodes generate).
"""

from __future__ import annotations

from .base import Family, Variant, count_blocks, timestep_embedding_macs

# numbers of every Wan: patch (1, 2, 2), umT5-XXL prompts padded to 512 tokens, 256 timestep features
_WAN = dict(patch=2, caption_channels=4096, text_tokens=512, time_proj_dim=256)
_T2V_14B = dict(_WAN, hidden=5120, heads=40, depth=40, mlp_ratio=13824 / 5120, latent_channels=16, out_channels=16)


class Wan(Family):
    name = "wan"
    label = "Wan"
    order = 40
    groups = (("", ("self_attn", "cross_attn", "ffn")),)
    group_names = ("blocks",)
    variants = (
        Variant(
            "wan2.1-t2v-1.3b",
            "Wan 2.1 T2V 1.3B",
            dict(_WAN, hidden=1536, heads=12, depth=30, mlp_ratio=8960 / 1536, latent_channels=16, out_channels=16),
        ),
        Variant("wan2.1-t2v-14b", "Wan 2.1 T2V 14B", _T2V_14B),
        # the A14B's two experts have the 14B's architecture; one schedule per expert
        Variant("wan2.2-t2v-a14b", "Wan 2.2 T2V A14B (one expert)", _T2V_14B),
        # 48-channel latents, 16 pixels per latent pixel
        Variant(
            "wan2.2-ti2v-5b",
            "Wan 2.2 TI2V 5B",
            dict(
                _WAN,
                hidden=3072,
                heads=24,
                depth=30,
                mlp_ratio=14336 / 3072,
                latent_channels=48,
                out_channels=48,
                vae_scale=16,
            ),
        ),
    )
    default_variant = "wan2.1-t2v-1.3b"
    colors = {"self_attn": (0.95, 0.55, 0.2), "cross_attn": (0.3, 0.7, 0.95), "ffn": (0.55, 0.85, 0.35)}
    tgate_components = ("cross_attn", "self_attn")
    attention_components = ("self_attn", "cross_attn")

    def detect(self, keys, key_set):
        # ComfyUI / original: the head's modulation and the block's three modules (not a VACE / audio variant's
        # extra blocks: those are left to block-level caching)
        if "head.modulation" in key_set and "blocks.0.self_attn.q.weight" in key_set:
            if "blocks.0.cross_attn.q.weight" in key_set and "blocks.0.ffn.0.weight" in key_set:
                return (count_blocks(keys, "blocks."),), "wan"
        if "condition_embedder.text_embedder.linear_1.weight" in key_set and "blocks.0.attn1.to_q.weight" in key_set:
            return (count_blocks(keys, "blocks."),), "wan"  # diffusers' WanTransformer3DModel
        return None

    def arch_from_diffusers_config(self, c, name, text_tokens):
        if "Wan" not in str(c.get("_class_name", "")) and not {"text_dim", "freq_dim", "ffn_dim"} <= set(c):
            return None
        heads, head_dim = int(c["num_attention_heads"]), int(c["attention_head_dim"])
        hidden = heads * head_dim
        patch = [int(n) for n in c.get("patch_size", (1, 2, 2))]
        if patch[0] != 1 or patch[1] != patch[2]:
            raise ValueError(f"Wan config: patch_size {tuple(patch)} (the cost model counts (1, p, p))")
        if c.get("image_dim") or c.get("added_kv_proj_dim"):
            raise ValueError("Wan config: image-to-video (image_dim / added_kv_proj_dim) is not in the cost model")
        cout = int(c.get("out_channels") or 16)
        return dict(
            name=name or "wan-config",
            hidden=hidden,
            heads=heads,
            depth=int(c.get("num_layers", 30)),
            mlp_ratio=int(c["ffn_dim"]) / hidden,
            patch=patch[1],
            latent_channels=int(c.get("in_channels", 16)),
            out_channels=cout,
            caption_channels=int(c["text_dim"]),
            text_tokens=text_tokens or 512,
            time_proj_dim=int(c["freq_dim"]),
            vae_scale=16 if cout == 48 else 8,
        )

    def step_macs(self, a, n_image, n_text, attention, height, width):
        N = n_image * int(a.extra.get("frames", 1))  # tokens of every latent frame
        T, D, F = n_text, a.hidden, a.ff_dim
        clip = int(a.extra.get("clip_tokens", 0))  # image-to-video (Wan 2.1 I2V): CLIP image tokens
        self_attn = 4 * N * D * D + (2 * N * N * D if attention else 0)  # q, k, v, o (+ QK^T, AV)
        cross_attn = 2 * N * D * D + 2 * (T + clip) * D * D + (2 * N * (T + clip) * D if attention else 0)
        ffn = 2 * N * D * F
        fixed = {
            "patch_embedding": N * a.token_in * D,
            "text_embedding": T * (a.caption_channels * D + D * D),
            "time_embedding": timestep_embedding_macs(a) + D * 6 * D,  # + time_projection (6 modulations)
            "head": N * D * a.token_out,
        }
        if clip:
            fixed["img_emb"] = clip * (1280 * 1280 + 1280 * D)  # MLPProj of the CLIP features
        return [[self_attn, cross_attn, ffn]], fixed
