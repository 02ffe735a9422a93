"""Test-only ComfyUI node pack for comfyui-ecad's end-to-end tests.

Loaded by tests/comfy_harness/server.py through the ``custom_nodes`` key of an
extra-model-paths yaml.  It patches nothing in ComfyUI (no detection shim): it
only adds nodes that make inputs no tiny model can provide, e.g. conditioning
without a text encoder.
"""
import torch


class TestRandomConditioning:
    """CONDITIONING from a seeded normal tensor (or zeros), no text encoder needed.

    PixArt (stock caption_channels): dim 4096, pooled_dim 0.
    Flux (tests' tiny models): dim = context_in_dim (64), pooled_dim = vec_in_dim (32);
    Flux needs ``pooled_output``.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
            "dim": ("INT", {"default": 4096, "min": 1, "max": 8192}),
            "pooled_dim": ("INT", {"default": 0, "min": 0, "max": 8192}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
            "zero": ("BOOLEAN", {"default": False}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, tokens, dim, pooled_dim, seed, zero):
        g = torch.Generator().manual_seed(int(seed))
        cond = torch.zeros(1, tokens, dim) if zero else torch.randn(1, tokens, dim, generator=g)
        extra = {}
        if pooled_dim:
            extra["pooled_output"] = (torch.zeros(1, pooled_dim) if zero
                                      else torch.randn(1, pooled_dim, generator=g))
        return ([[cond, extra]],)


NODE_CLASS_MAPPINGS = {"TestRandomConditioning": TestRandomConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"TestRandomConditioning": "Test Random Conditioning"}
