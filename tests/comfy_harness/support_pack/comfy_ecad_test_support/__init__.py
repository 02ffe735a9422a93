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
        return {
            "required": {
                "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
                "dim": ("INT", {"default": 4096, "min": 1, "max": 8192}),
                "pooled_dim": ("INT", {"default": 0, "min": 0, "max": 8192}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "zero": ("BOOLEAN", {"default": False}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, tokens, dim, pooled_dim, seed, zero):
        g = torch.Generator().manual_seed(int(seed))
        cond = torch.zeros(1, tokens, dim) if zero else torch.randn(1, tokens, dim, generator=g)
        extra = {}
        if pooled_dim:
            extra["pooled_output"] = torch.zeros(1, pooled_dim) if zero else torch.randn(1, pooled_dim, generator=g)
        return ([[cond, extra]],)


class TestTinyCLIP:
    """A real ComfyUI CLIP (SD1 tokenizer + ComfyUI's CLIPTextModel) shrunk to one layer, seeded weights.

    Lets workflows encode text prompts for the tiny FLUX and SD3 checkpoints: ``hidden``
    is the context width and the pooled width (ComfyUI's CLIP text projection is
    square; FLUX uses the first vec_in_dim values). Nothing is downloaded: the
    tokenizer files ship with ComfyUI.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "hidden": ("INT", {"default": 64, "min": 8, "max": 1024}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
            }
        }

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, hidden, seed):
        import functools

        import comfy.sd
        import comfy.sd1_clip
        import comfy.supported_models_base

        config = {
            "hidden_act": "quick_gelu",
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "projection_dim": hidden,
            "vocab_size": 49408,
            "bos_token_id": 0,
            "eos_token_id": 49407,
            "pad_token_id": 1,
        }

        class TinyClipL(comfy.sd1_clip.SDClipModel):
            def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 - ComfyUI's signature
                super().__init__(
                    device=device,
                    dtype=dtype,
                    model_options=model_options,
                    textmodel_json_config=config,
                    return_projected_pooled=True,
                    layer="last",
                )

        clip_class = functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=TinyClipL)
        tokenizer = functools.partial(comfy.sd1_clip.SD1Tokenizer)
        target = comfy.supported_models_base.ClipTarget(tokenizer, clip_class)
        clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():  # ComfyUI's ops leave weights uninitialised: fill them reproducibly
            for name, p in clip.cond_stage_model.named_parameters():
                if "layer_norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        return (clip,)


NODE_CLASS_MAPPINGS = {"TestRandomConditioning": TestRandomConditioning, "TestTinyCLIP": TestTinyCLIP}
NODE_DISPLAY_NAME_MAPPINGS = {"TestRandomConditioning": "Test Random Conditioning", "TestTinyCLIP": "Test Tiny CLIP"}
