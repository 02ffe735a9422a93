"""HunyuanVideo 1.5: FLUX.1's double-stream blocks (joint attention over video and text tokens, image and text
feed-forward) and, in the layout, FLUX's single-stream group (HunyuanVideo 1.5 has none: count 0). The units are
named as FLUX's, since the blocks are ComfyUI's FLUX blocks.

Video: the image tokens are every latent frame's (patch 1, 16 pixels per latent pixel), so each unit's output (and
its cache) holds the temporal tokens; the cost model counts ``frames`` latent frames (``Arch.extra``, default 1: a
single-frame sample, what the Evolve and Evaluate nodes generate). Text: the refined prompt tokens (Qwen2.5-VL),
plus ``byt5_tokens`` (glyph prompt) and ``vision_tokens`` (image-to-video: SigLIP features) in ``Arch.extra``.
"""

from __future__ import annotations

from .base import Variant, count_blocks, timestep_embedding_macs
from .flux_structure import FluxStructure

REFINER_BLOCKS = 2  # ComfyUI's TokenRefiner: 2 blocks, MLP ratio 4
BYT5 = (1472, 2048, 2048)  # ByT5Mapper: in, hidden, out widths
VISION_IN = 1152  # SigLIP features (vision_in, Wan's MLPProj)


class HunyuanVideo15(FluxStructure):
    name = "hunyuan_video15"
    label = "HunyuanVideo 1.5"
    order = 45
    variants = (
        Variant(
            "hunyuanvideo-1.5",
            "HunyuanVideo 1.5",
            dict(
                hidden=2048,
                heads=16,
                depth=54,
                single_depth=0,
                patch=1,
                vae_scale=16,
                latent_channels=65,  # 32 noise + 32 image condition + 1 mask channels in
                out_channels=32,
                caption_channels=3584,  # Qwen2.5-VL-7B
                text_tokens=256,
            ),
        ),
    )
    default_variant = "hunyuanvideo-1.5"

    def detect(self, keys, key_set):
        # ComfyUI / original: HunyuanVideo's token refiner plus 1.5's vision projection and condition-type embedding
        if (
            "txt_in.individual_token_refiner.blocks.0.norm1.weight" in key_set
            and "vision_in.proj.0.weight" in key_set
            and "cond_type_embedding.weight" in key_set
        ):
            return (count_blocks(keys, "double_blocks."), count_blocks(keys, "single_blocks.")), "hunyuanvideo-1.5"
        return None

    def step_macs(self, a, n_image, n_text, attention, height, width):
        D, F = a.hidden, a.ff_dim
        N = n_image * int(a.extra.get("frames", 1))  # tokens of every latent frame
        b5, vis = int(a.extra.get("byt5_tokens", 0)), int(a.extra.get("vision_tokens", 0))
        T = n_text + b5 + vis  # the text stream: refined prompt, glyph and vision tokens
        t = timestep_embedding_macs(a)
        refiner = REFINER_BLOCKS * (2 * D * D + n_text * 12 * D * D)  # adaLN; qkv, proj, 4x MLP per token
        fixed = {
            "img_in": N * a.token_in * D,
            "time_in": t * (1 + int(a.extra.get("guidance", 0)) + int(a.extra.get("meanflow", 0))),
            "vector_in": a.pooled_dim * D + D * D if a.pooled_dim else 0,
            # input projection; timestep and mean-prompt embedders; the refiner blocks
            "txt_in": n_text * a.caption_channels * D + t + a.caption_channels * D + D * D + refiner,
            "byt5_in": b5 * (BYT5[0] * BYT5[1] + BYT5[1] * BYT5[2] + BYT5[2] * D),
            "vision_in": vis * (VISION_IN * VISION_IN + VISION_IN * D),
            # adaLN-Zero linears run every step: gates apply fresh to cached outputs
            "block_modulation": a.depth * 2 * 6 * D * D + a.single_depth * 3 * D * D,
            "final_layer": 2 * D * D + N * D * a.token_out,
        }
        return self.block_macs(N, T, D, F, attention), fixed
