"""Built-in tiny random-weight diffusers pipelines (PixArt-α/Σ, FLUX) for demos and tests.

Real diffusers classes with small configs and seeded random weights; text goes
through a real (tiny) T5/CLIP encoder behind a byte-level tokenizer built in
memory, so prompts really change the conditioning. Nothing is downloaded.
"""

from __future__ import annotations

import torch


def byte_tokenizer(model_max_length: int = 120, kind: str = "t5"):
    """A byte-level BPE tokenizer built in memory (no vocabulary file)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"] if kind == "t5" else ["<|endoftext|>", "<|startoftext|>", "<unk>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for b in sorted(pre_tokenizers.ByteLevel.alphabet()):  # the alphabet's order changes per process
        vocab.setdefault(b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if kind == "t5":
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
            model_max_length=model_max_length,
        )
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            bos_token="<|startoftext|>",
            unk_token="<unk>",
            model_max_length=model_max_length,
        )
    return fast


def _seeded(seed: int):
    torch.manual_seed(seed)


def tiny_pixart_transformer(
    variant: str = "alpha",
    *,
    layers: int = 4,
    heads: int = 2,
    head_dim: int = 16,
    caption_channels: int = 32,
    sample_size: int = 32,
    seed: int = 0,
):
    from diffusers import PixArtTransformer2DModel

    if variant not in ("alpha", "sigma"):
        raise ValueError(f"variant must be 'alpha' or 'sigma', got {variant!r}")
    _seeded(seed)
    kw = dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=layers,
        cross_attention_dim=heads * head_dim,
        caption_channels=caption_channels,
        sample_size=sample_size,
        norm_type="ada_norm_single",
        num_embeds_ada_norm=1000,
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        attention_bias=True,
        activation_fn="gelu-approximate",
        use_additional_conditions=False,
    )
    if variant == "sigma":
        kw["interpolation_scale"] = 0.5 * sample_size / 32 * 2  # Σ rescales its position grid
    return PixArtTransformer2DModel(**kw).eval()


def tiny_vae(latent_channels: int = 4, seed: int = 0):
    from diffusers import AutoencoderKL

    _seeded(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        shift_factor=0.0,
        scaling_factor=1.0,
    ).eval()


def tiny_pixart_pipeline(variant: str = "alpha", *, layers: int = 4, heads: int = 2, head_dim: int = 16, seed: int = 0):
    """A PixArt-α (or Σ with ``variant='sigma'``) pipeline with tiny random weights, 256² native."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline
    from transformers import T5Config, T5EncoderModel

    max_len = 120 if variant == "alpha" else 300
    tok = byte_tokenizer(max_len)
    _seeded(seed + 1)
    te = T5EncoderModel(
        T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval()
    tr = tiny_pixart_transformer(variant, layers=layers, heads=heads, head_dim=head_dim, caption_channels=32, seed=seed)
    sched = DPMSolverMultistepScheduler(
        beta_schedule="linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000, prediction_type="epsilon"
    )
    cls = PixArtAlphaPipeline if variant == "alpha" else PixArtSigmaPipeline
    return cls(tokenizer=tok, text_encoder=te, vae=tiny_vae(4, seed + 2), transformer=tr, scheduler=sched)


def tiny_flux_transformer(
    *, double: int = 2, single: int = 4, heads: int = 2, head_dim: int = 16, guidance: bool = True, seed: int = 0
):
    from diffusers import FluxTransformer2DModel

    _seeded(seed)
    # axes_dims_rope must sum to head_dim
    axes = (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        out_channels=None,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance,
        axes_dims_rope=axes,
    ).eval()


def tiny_flux_pipeline(*, double: int = 2, single: int = 4, guidance: bool = True, seed: int = 0):
    """A FLUX.1 pipeline (dev-like with guidance embedding, or schnell-like) with tiny random weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tok_t5 = byte_tokenizer(64)
    tok_clip = byte_tokenizer(77, kind="clip")
    _seeded(seed + 1)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok_clip),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=32,
            eos_token_id=0,
            pad_token_id=0,
            bos_token_id=1,
        )
    ).eval()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tok_t5),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval()
    tr = tiny_flux_transformer(double=double, single=single, guidance=guidance, seed=seed)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return FluxPipeline(
        scheduler=sched,
        vae=tiny_vae(16, seed + 2),
        text_encoder=clip,
        tokenizer=tok_clip,
        text_encoder_2=t5,
        tokenizer_2=tok_t5,
        transformer=tr,
    )


def tiny_pipeline(model: str, **kw):
    """``model``: pixart-alpha, pixart-sigma, flux-dev or flux-schnell."""
    if model == "pixart-alpha":
        return tiny_pixart_pipeline("alpha", **kw)
    if model == "pixart-sigma":
        return tiny_pixart_pipeline("sigma", **kw)
    if model in ("flux-dev", "flux-schnell"):
        return tiny_flux_pipeline(guidance=model == "flux-dev", **kw)
    raise ValueError(f"unknown tiny model {model!r}; known: pixart-alpha, pixart-sigma, flux-dev, flux-schnell")
