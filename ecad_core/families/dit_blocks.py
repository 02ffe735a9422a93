"""Any DiT cached at block granularity (HunyuanVideo 1.0, LTX-Video, Chroma Radiance, and any model of a component
family whose own adapter declines it): one unit per block, which reuses the block's residual (output minus input).
A main and a single-stream group."""

from __future__ import annotations

from .base import Family, count_blocks


class DitBlocks(Family):
    name = "dit_blocks"
    label = "block-level DiT"
    order = 90  # the most generic: detected last
    groups = (("", ("block",)), ("single_", ("block",)))
    group_names = ("blocks", "single_blocks")
    colors = {"block": (0.9, 0.9, 0.9)}

    def detect(self, keys, key_set):
        if "joint_blocks.0.context_block.attn.qkv.weight" in key_set:  # SD3 / SD3.5
            return (count_blocks(keys, "joint_blocks."),), "sd3"
        if "head.modulation" in key_set:  # Wan
            n = count_blocks(keys, "blocks.")
            if n:
                return (n,), "wan"
        return None
