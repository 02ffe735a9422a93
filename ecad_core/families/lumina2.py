"""Z-Image and Lumina-Image 2.0 (ComfyUI's ``NextDiT``, family ``lumina2``): single-stream blocks over the joint
text + image sequence, each with a joint attention (``attn``) and a SwiGLU feed-forward (``ffn``).

Only the main ``layers`` are cached. The two context-refiner blocks (text only, no timestep) and the two
noise-refiner blocks (image only) in front of them always run, as fixed cost.
"""

from __future__ import annotations

from .base import Family, Variant, count_blocks


def _ffn_dim(dim: int, multiplier: float, multiple_of: int = 256) -> int:
    """``FeedForward``'s inner width: int(multiplier * dim) rounded up to ``multiple_of``."""
    hidden = int(multiplier * dim)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _arch(dim, heads, kv_heads, layers, multiplier, cap_dim, z_image):
    ffn = _ffn_dim(dim, multiplier)
    return dict(
        hidden=dim,
        heads=heads,
        depth=layers,
        mlp_ratio=ffn / dim,
        patch=2,
        latent_channels=16,
        out_channels=16,
        caption_channels=cap_dim,
        text_tokens=256,
        extra={
            "kv_heads": kv_heads,
            "ffn_dim": ffn,
            "refiner_layers": 2,
            # adaLN input width: Z-Image's 256-wide timestep embedding, Lumina 2's min(dim, 1024)
            "mod_dim": min(dim, 256 if z_image else 1024),
            "t_hidden": min(dim, 1024),
            "pad_tokens_multiple": 32 if z_image else 0,
        },
    )


class Lumina2(Family):
    name = "lumina2"
    label = "Z-Image / Lumina2"
    order = 45
    groups = (("", ("attn", "ffn")),)
    group_names = ("layers",)
    variants = (
        # Z-Image (Turbo and Base): Qwen3-4B text features (2560 wide)
        Variant("z-image", "Z-Image", _arch(3840, 30, 30, 30, 8.0 / 3.0, 2560, True)),
        # Lumina-Image 2.0: Gemma-2-2B text features (2304 wide)
        Variant("lumina-image-2", "Lumina-Image 2.0", _arch(2304, 24, 8, 26, 4.0, 2304, False)),
    )
    default_variant = "z-image"
    colors = {"attn": (0.95, 0.55, 0.2), "ffn": (0.55, 0.85, 0.35)}
    tgate_components = None  # joint attention over text and image: no cross-attention to gate
    attention_components = ("attn",)

    def detect(self, keys, key_set):
        # ComfyUI's / the original checkpoints (diffusers' ZImageTransformer2DModel names differ)
        if "cap_embedder.1.weight" in key_set and "layers.0.attention.qkv.weight" in key_set:
            n = count_blocks(keys, "layers.")
            return (n,), ("z-image" if "cap_pad_token" in key_set else "lumina2")
        return None

    def step_macs(self, a, n_image, n_text, attention, height, width):
        D, H = a.hidden, a.heads
        hd = D // H
        e = a.extra
        kv, F, mod = int(e["kv_heads"]), int(e["ffn_dim"]), int(e["mod_dim"])
        pad = int(e.get("pad_tokens_multiple", 0))
        N = n_image + (-n_image) % pad if pad else n_image  # Z-Image pads both sequences to a multiple of 32
        T = n_text + (-n_text) % pad if pad else n_text

        def attn(n):  # q, k, v (grouped k/v heads) and the output projection; QK^T and AV over all heads
            return n * D * (H + 2 * kv) * hd + n * H * hd * D + (2 * n * n * D if attention else 0)

        def ffn(n):  # SwiGLU: w1, w3 in, w2 out
            return 3 * n * D * F

        L = N + T
        refiners = int(e["refiner_layers"])
        fixed = {
            "x_embedder": n_image * a.token_in * D,
            "cap_embedder": n_text * a.caption_channels * D,
            "t_embedder": a.time_proj_dim * int(e["t_hidden"]) + int(e["t_hidden"]) * mod,
            "context_refiner": refiners * (attn(T) + ffn(T)),
            "noise_refiner": refiners * (attn(N) + ffn(N) + mod * 4 * D),
            # each block's adaLN runs every step: gates apply fresh to cached outputs
            "block_modulation": a.depth * mod * 4 * D,
            "final_layer": mod * D + L * D * a.token_out,  # over the whole joint sequence
        }
        return [[attn(L), ffn(L)]], fixed
