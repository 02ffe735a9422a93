"""The unit structure of the families built of FLUX's double- and single-stream blocks, in one place: FLUX.1
(``flux``), FLUX.2, Chroma and HunyuanVideo 1.5 records subclass ``FluxStructure``. Its own module, since FLUX.1's
record reads FLUX.2's and Chroma's to defer to them."""

from __future__ import annotations

from .base import Family


class FluxStructure(Family):
    """FLUX's unit structure, shared by the families built of FLUX's double- and single-stream blocks (FLUX.1,
    FLUX.2, Chroma, HunyuanVideo 1.5): their groups, components, colours and search seeds. Not a family itself
    (``abstract``: the registry skips it)."""

    abstract = True
    groups = (
        ("", ("full_attn", "full_ff", "full_ff_context")),
        ("single_", ("single_attn", "single_proj_mlp", "single_proj_out")),
    )
    group_names = ("double_blocks", "single_blocks")
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

    @staticmethod
    def block_macs(n_image: int, n_text: int, D: int, F: int, attention: bool, gated: bool = False) -> list[list[int]]:
        """MACs of a double and a single block's units. ``gated``: FLUX.2's SiLU-gated MLPs (the input
        projection D -> 2F: gate and value)."""
        N, T = n_image, n_text
        L = N + T  # joint attention over image and text tokens
        joint = 2 * L * L * D if attention else 0
        ff = 3 if gated else 2
        double = [
            4 * L * D * D + joint,  # q, k, v, out for both streams
            ff * N * D * F,  # image feed-forward
            ff * T * D * F,  # text feed-forward
        ]
        single = [
            3 * L * D * D + joint,  # q, k, v (the output projection is fused into proj_out / linear2)
            (ff - 1) * L * D * F,  # proj_mlp (linear1's MLP rows)
            L * (D + F) * D,  # proj_out over [attn, mlp]
        ]
        return [double, single]
