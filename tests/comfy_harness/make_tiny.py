"""Random-weight checkpoints that ComfyUI (v0.3.75, 0.33) detects on its STOCK path.

No detection shim: the DiTs keep the widths that ``comfy/model_detection.py``
hard-codes (PixArt 1152 wide / 16 heads, Flux 3072 wide / 24 heads) and are only
made shallow.  Key names come from ComfyUI's own classes, built on the ``meta``
device, so they always match what ``UNETLoader`` expects.

Files (``<models_root>/<subdir>/<name>.safetensors``):

======================== ================= ===================================================
name                     subdir            what
======================== ================= ===================================================
ecad_tiny_pixart_alpha   diffusion_models  PixArt-alpha, depth 2, micro_condition, 120 tokens, fp16
ecad_tiny_pixart_sigma   diffusion_models  PixArt-sigma, depth 2, 300 tokens, fp16
ecad_tiny_flux_dev       diffusion_models  FLUX.1-dev, 1 double + 1 single, guidance, ctx 64, vec 32, bf16
ecad_tiny_flux_schnell   diffusion_models  FLUX.1-schnell, 1 double + 1 single, ctx 64, vec 32, bf16
ecad_tiny_pixart_256pe   diffusion_models  PixArt-alpha 256 layout: depth 2 + a stored pos_embed [1, 256, 1152]
                                           (ComfyUI then guesses pe_interpolation = 32 // 64 = 0), fp16
ecad_tiny_sd3            diffusion_models  SD3 (MMDiT), depth 2 (hidden 128), ctx 64, pooled 64, fp16
ecad_tiny_wan            diffusion_models  Wan 2.1 t2v, 2 blocks, dim 128, text 4096, fp16
ecad_tiny_qwen_image     diffusion_models  Qwen-Image, 1 block (stock width 3072, text 3584), bf16
ecad_tiny_lumina2        diffusion_models  Lumina-Image 2.0 (NextDiT), 2 layers (stock width 2304), caption 64, bf16
ecad_tiny_zimage         diffusion_models  Z-Image (NextDiT), 1 layer (stock width 3840), caption 64, bf16
ecad_tiny_flux2_klein    diffusion_models  FLUX.2, Klein-sized: width 256, 1 double + 1 single, ctx 64, bf16
                                           (ComfyUI 0.33 loads it; 0.3.75 detects FLUX.2 only 6144 wide)
ecad_tiny_chroma         diffusion_models  Chroma, 1 double + 1 single (width 3072, stock approximator), ctx 64, bf16
ecad_tiny_hunyuan_video15 diffusion_models HunyuanVideo 1.5 (vision_in 1152, condition-type embedding), 2 double
                                           blocks, width 128, patch 1, 65 in / 32 out channels, ctx 64, fp16
ecad_tiny_flux2_vae      vae               FLUX.2's VAE (latent batch norm, 128 channels at 1/16), decoder 32 wide,
                                           no encoder (ComfyUI 0.33 decodes the tiny FLUX.2 with it)
ecad_tiny_taesd_4ch      vae               random TAESD, 4 latent channels (PixArt)
ecad_tiny_taesd_16ch     vae               random TAESD, 16 latent channels (Flux)
ecad_tiny_wan21_vae      vae               random Wan 2.1 VAE (3-D latents of Qwen-Image and Wan 2.1), width 8
======================== ================= ===================================================

Conditioning the models need (see ``TestRandomConditioning`` in the support pack):
PixArt: dim 4096 (stock caption_channels), no pooled; Flux: dim 64, pooled 32; SD3: dim 64, pooled 64;
Wan: dim 4096, no pooled; Qwen-Image: dim 3584 (``QWEN_CONTEXT_DIM``), no pooled.

Every file carries its recipe hash in the safetensors metadata key
``ecad_tiny_recipe``; a file whose hash matches is not rebuilt.  The check only
reads the safetensors header (stdlib), so :func:`ensure_models` is cheap and
does not import torch or ComfyUI.  Building runs in a subprocess by default,
so that importing ComfyUI never pollutes the caller (e.g. pytest).

Command line::

    python make_tiny.py --comfy-dir .cache/ComfyUI --models-root .cache/tiny-models [names...]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

RECIPE_VERSION = 1
RECIPE_KEY = "ecad_tiny_recipe"

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# ECAD_COMFY_DIR overrides where ComfyUI is (default: .cache/ComfyUI from scripts/setup_env.sh)
DEFAULT_COMFY_DIR = Path(os.environ.get("ECAD_COMFY_DIR") or REPO_ROOT / ".cache" / "ComfyUI")


def comfy_version_of(comfy_dir: os.PathLike | str) -> str:
    """The version of the ComfyUI tree at ``comfy_dir`` (its ``comfyui_version.py``, read without importing)."""
    p = Path(comfy_dir) / "comfyui_version.py"
    m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", p.read_text()) if p.is_file() else None
    return m.group(1) if m else "unknown"


# one folder per ComfyUI version: the key names of a checkpoint come from that version's classes
DEFAULT_MODELS_ROOT = REPO_ROOT / ".cache" / "tiny-models" / f"comfy-{comfy_version_of(DEFAULT_COMFY_DIR)}"
# ECAD_COMFY_PYTHON: the interpreter that imports that ComfyUI to build (ComfyUI 0.33 has its own venv)
DEFAULT_PYTHON = os.environ.get("ECAD_COMFY_PYTHON") or sys.executable
# what the tests themselves write beside the models (images, searches): other versions' tiny models go first
DISK_HEADROOM = 2 * 2**30

# Conditioning sizes the tiny models expect (used by tests and workflows).
PIXART_COND_DIM = 4096
FLUX_CONTEXT_DIM = 64
FLUX_POOLED_DIM = 32
LUMINA_CONTEXT_DIM = 64  # the tiny Lumina 2 / Z-Image caption width (ComfyUI reads it from cap_embedder)
QWEN_CONTEXT_DIM = 3584  # Qwen2.5-VL-7B's width: ComfyUI's Qwen-Image detection keeps the stock joint_attention_dim

FLUX_BASE = dict(
    in_channels=16,
    out_channels=16,
    vec_in_dim=FLUX_POOLED_DIM,
    context_in_dim=FLUX_CONTEXT_DIM,
    hidden_size=3072,
    mlp_ratio=4.0,
    num_heads=24,
    depth=1,
    depth_single_blocks=1,
    axes_dim=[16, 56, 56],
    theta=10000,
    patch_size=2,
    qkv_bias=True,
)

SPECS: dict[str, dict] = {
    "ecad_tiny_pixart_alpha": dict(
        subdir="diffusion_models",
        kind="pixart",
        dtype="float16",
        seed=101,
        kwargs=dict(
            hidden_size=1152,
            num_heads=16,
            depth=2,
            caption_channels=PIXART_COND_DIM,
            model_max_length=120,
            micro_condition=True,
            in_channels=4,
            patch_size=2,
        ),
    ),
    "ecad_tiny_pixart_sigma": dict(
        subdir="diffusion_models",
        kind="pixart",
        dtype="float16",
        seed=102,
        kwargs=dict(
            hidden_size=1152,
            num_heads=16,
            depth=2,
            caption_channels=PIXART_COND_DIM,
            model_max_length=300,
            micro_condition=False,
            in_channels=4,
            patch_size=2,
        ),
    ),
    "ecad_tiny_flux_dev": dict(
        subdir="diffusion_models",
        kind="flux",
        dtype="bfloat16",
        seed=103,
        kwargs=dict(FLUX_BASE, guidance_embed=True),
    ),
    "ecad_tiny_flux_schnell": dict(
        subdir="diffusion_models",
        kind="flux",
        dtype="bfloat16",
        seed=104,
        kwargs=dict(FLUX_BASE, guidance_embed=False),
    ),
    # like PixArt-XL-2-256x256: the original checkpoint stores its fixed 16x16 pos_embed
    "ecad_tiny_pixart_256pe": dict(
        subdir="diffusion_models",
        kind="pixart",
        dtype="float16",
        seed=109,
        kwargs=dict(
            hidden_size=1152,
            num_heads=16,
            depth=2,
            caption_channels=PIXART_COND_DIM,
            model_max_length=120,
            micro_condition=False,
            in_channels=4,
            patch_size=2,
        ),
        extra={"pos_embed": [1, 256, 1152]},
    ),
    # SD3: MMDiT's width is 64 x depth, so depth 2 is 128 wide (block-level ECAD units)
    "ecad_tiny_sd3": dict(
        subdir="diffusion_models",
        kind="mmdit",
        dtype="float16",
        seed=107,
        kwargs=dict(
            input_size=None,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            depth=2,
            adm_in_channels=FLUX_CONTEXT_DIM,
            pos_embed_max_size=16,
            num_patches=256,
            pos_embed_scaling_factor=None,
            x_block_self_attn_layers=[],
            context_embedder_config={
                "target": "torch.nn.Linear",
                "params": {"in_features": FLUX_CONTEXT_DIM, "out_features": 128},
            },
        ),
    ),
    # Wan 2.1: num_heads = dim // 128 on the stock detection path
    "ecad_tiny_wan": dict(
        subdir="diffusion_models",
        kind="wan",
        dtype="float16",
        seed=108,
        kwargs=dict(
            model_type="t2v",
            patch_size=[1, 2, 2],
            dim=128,
            ffn_dim=256,
            freq_dim=256,
            text_dim=4096,
            in_dim=16,
            out_dim=16,
            num_heads=1,
            num_layers=2,
            qk_norm=True,
            cross_attn_norm=True,
            eps=1e-6,
            image_model="wan2.1",
        ),
    ),
    # Qwen-Image: ComfyUI detects only in_channels and the block count, so the width stays the stock 3072
    "ecad_tiny_qwen_image": dict(
        subdir="diffusion_models",
        kind="qwen_image",
        dtype="bfloat16",
        seed=110,
        cond={"dim": QWEN_CONTEXT_DIM},  # the constructor's default joint_attention_dim
        kwargs=dict(num_layers=1, in_channels=64, out_channels=16),
    ),
    # Lumina 2 / Z-Image: ComfyUI detects them by width (2304 / 3840) and reads only the caption width and the
    # layer count; the two refiner stacks are always 2 blocks each
    "ecad_tiny_lumina2": dict(
        subdir="diffusion_models",
        kind="lumina2",
        dtype="bfloat16",
        seed=111,
        cond={"dim": LUMINA_CONTEXT_DIM},  # NextDiT names its caption width cap_feat_dim
        kwargs=dict(
            patch_size=2,
            in_channels=16,
            dim=2304,
            n_layers=2,
            n_heads=24,
            n_kv_heads=8,
            axes_dims=[32, 32, 32],
            axes_lens=[300, 512, 512],
            rope_theta=10000.0,
            ffn_dim_multiplier=4.0,
            qk_norm=True,
            cap_feat_dim=LUMINA_CONTEXT_DIM,
        ),
    ),
    "ecad_tiny_zimage": dict(
        subdir="diffusion_models",
        kind="lumina2",
        dtype="bfloat16",
        seed=112,
        cond={"dim": LUMINA_CONTEXT_DIM},  # NextDiT names its caption width cap_feat_dim
        kwargs=dict(
            patch_size=2,
            in_channels=16,
            dim=3840,
            n_layers=1,
            n_heads=30,
            n_kv_heads=30,
            axes_dims=[32, 48, 48],
            axes_lens=[1536, 512, 512],
            rope_theta=256.0,
            ffn_dim_multiplier=8.0 / 3.0,
            qk_norm=True,
            z_image_modulation=True,
            time_scale=1000.0,
            pad_tokens_multiple=32,
            cap_feat_dim=LUMINA_CONTEXT_DIM,
        ),
    ),
    # FLUX.2 at Klein size (issue #18): ComfyUI 0.33 reads the heads from the width (width / 128); 0.3.75 fixes
    # 48 heads (FLUX.2-dev's 6144 width) and refuses this file, so its FLUX.2 tests use ComfyUI's class in-process
    "ecad_tiny_flux2_klein": dict(
        subdir="diffusion_models",
        kind="flux",
        dtype="bfloat16",
        seed=113,
        kwargs=dict(
            in_channels=128,
            out_channels=128,
            vec_in_dim=None,
            context_in_dim=FLUX_CONTEXT_DIM,
            hidden_size=256,
            mlp_ratio=3.0,
            num_heads=2,
            depth=1,
            depth_single_blocks=1,
            axes_dim=[32, 32, 32, 32],
            theta=2000,
            patch_size=1,
            qkv_bias=False,
            guidance_embed=False,
            global_modulation=True,
            mlp_silu_act=True,
            ops_bias=False,
        ),
    ),
    # Chroma: ComfyUI fixes the distilled guidance layer (5 x 5120 wide, out 3072), so the width stays 3072
    "ecad_tiny_chroma": dict(
        subdir="diffusion_models",
        kind="chroma",
        dtype="bfloat16",
        seed=114,
        # ComfyUI 0.3.75's Chroma asks its conditioning for a pooled output (and ignores it)
        cond={"dim": FLUX_CONTEXT_DIM, "pooled": FLUX_POOLED_DIM},
        kwargs=dict(
            in_channels=64,
            out_channels=64,
            context_in_dim=FLUX_CONTEXT_DIM,
            hidden_size=3072,
            mlp_ratio=4.0,
            num_heads=24,
            depth=1,
            depth_single_blocks=1,
            axes_dim=[16, 56, 56],
            theta=10000,
            patch_size=2,
            qkv_bias=True,
            in_dim=64,
            out_dim=3072,
            hidden_dim=5120,
            n_layers=5,
        ),
    ),
    # HunyuanVideo 1.5: ComfyUI reads the heads from the width (width / 128) and needs rope axes summing to 128;
    # vision_in (1152 wide) makes it 1.5 (HunyuanVideo15: 32-channel latents, 16 pixels per latent pixel)
    "ecad_tiny_hunyuan_video15": dict(
        subdir="diffusion_models",
        kind="hunyuan_video",
        dtype="float16",
        seed=118,
        cond={"dim": FLUX_CONTEXT_DIM, "pooled": FLUX_POOLED_DIM},  # ComfyUI's HunyuanVideo asks for a pooled output
        kwargs=dict(
            in_channels=65,
            out_channels=32,
            vec_in_dim=None,
            context_in_dim=FLUX_CONTEXT_DIM,
            hidden_size=128,
            mlp_ratio=4.0,
            num_heads=1,
            depth=2,
            depth_single_blocks=0,
            axes_dim=[16, 56, 56],
            theta=256,
            patch_size=[1, 1, 1],
            qkv_bias=True,
            guidance_embed=False,
            byt5=False,
            meanflow=False,
            use_cond_type_embedding=True,
            vision_in_dim=1152,
        ),
    ),
    # the Wan 2.1 VAE: ComfyUI reads its width from decoder.head.0.gamma, so 8 wide decodes in milliseconds
    "ecad_tiny_wan21_vae": dict(
        subdir="vae",
        kind="wan21_vae",
        dtype="float32",
        seed=115,
        kwargs=dict(dim=8, z_dim=16),
    ),
    # FLUX.2's VAE as ComfyUI's loader detects it (``bn.running_mean``: 32-channel AutoencoderKL whose latents are
    # patchified 2x2 to 128 channels at 1/16); 0.33 reads the decoder's width from decoder.conv_in (32: GroupNorm's
    # 32 groups) and fixes the encoder's (128), so the encoder is left out (decode only; ComfyUI loads non-strict).
    # 0.3.75 fixes both widths: there the file does not load (nor does a small FLUX.2)
    "ecad_tiny_flux2_vae": dict(
        subdir="vae",
        kind="flux2_vae",
        dtype="float32",
        seed=119,
        kwargs=dict(decoder_ch=32),
    ),
    "ecad_tiny_taesd_4ch": dict(
        subdir="vae",
        kind="taesd",
        dtype="float32",
        seed=105,
        kwargs=dict(latent_channels=4),
    ),
    "ecad_tiny_taesd_16ch": dict(
        subdir="vae",
        kind="taesd",
        dtype="float32",
        seed=106,
        kwargs=dict(latent_channels=16),
    ),
}

# Weight init: bias 0; 1-D weights and ``.scale`` 1; everything else N(0, WEIGHT_STD).
WEIGHT_STD = 0.02


def recipe_hash(name: str, comfy_dir: os.PathLike | str = DEFAULT_COMFY_DIR) -> str:
    """The recipe of a tiny model as built by the ComfyUI at ``comfy_dir`` (its version is part of it)."""
    spec = SPECS[name]
    blob = json.dumps(
        {"v": RECIPE_VERSION, "name": name, "std": WEIGHT_STD, "comfy": comfy_version_of(comfy_dir), **spec},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_name(name: str) -> str:
    """File name as ComfyUI lists it (e.g. for UNETLoader's ``unet_name``)."""
    return f"{name}.safetensors"


def model_path(models_root: os.PathLike | str, name: str) -> Path:
    return Path(models_root) / SPECS[name]["subdir"] / file_name(name)


def read_safetensors_metadata(path: os.PathLike | str) -> dict:
    """The ``__metadata__`` of a safetensors file, read with the stdlib only."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            return {}
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            return {}
        try:
            return json.loads(f.read(n)).get("__metadata__", {}) or {}
        except ValueError:
            return {}


def is_current(models_root: os.PathLike | str, name: str, comfy_dir: os.PathLike | str = DEFAULT_COMFY_DIR) -> bool:
    p = model_path(models_root, name)
    return p.is_file() and read_safetensors_metadata(p).get(RECIPE_KEY) == recipe_hash(name, comfy_dir)


def ensure_models(
    models_root: os.PathLike | str = DEFAULT_MODELS_ROOT,
    names: list[str] | None = None,
    comfy_dir: os.PathLike | str = DEFAULT_COMFY_DIR,
    python: str | None = None,
    in_process: bool = False,
) -> dict[str, Path]:
    """Make sure the named tiny models exist (all by default); return name -> path.

    Missing or outdated files are built in a subprocess running ``python``
    (default: ``DEFAULT_PYTHON``) unless ``in_process`` is true.
    """
    names = list(SPECS) if names is None else list(names)
    for n in names:
        if n not in SPECS:
            raise KeyError(f"unknown tiny model {n!r}; known: {sorted(SPECS)}")
    todo = [n for n in names if not is_current(models_root, n, comfy_dir)]
    if todo:
        if in_process:
            build(comfy_dir, models_root, todo)
        else:
            cmd = [
                python or DEFAULT_PYTHON,
                str(Path(__file__).resolve()),
                "--comfy-dir",
                str(comfy_dir),
                "--models-root",
                str(models_root),
                *todo,
            ]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"building tiny models failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
        missing = [n for n in todo if not is_current(models_root, n, comfy_dir)]
        if missing:
            raise RuntimeError(f"tiny models still missing after build: {missing}")
    return {n: model_path(models_root, n) for n in names}


# --------------------------------------------------------------------------- building (imports ComfyUI)


def _import_comfy(comfy_dir):
    comfy_dir = str(Path(comfy_dir).resolve())
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args

    args.cpu = True  # must happen before anything imports comfy.model_management
    import comfy.ops  # noqa: F401


def _meta_module(spec):
    import comfy.ops

    ops = comfy.ops.disable_weight_init
    kind, kw = spec["kind"], spec["kwargs"]
    if kind == "pixart":
        import comfy.ldm.pixart.pixartms as pixartms

        return pixartms.PixArtMS(device="meta", operations=ops, **kw)
    if kind == "flux":
        import comfy.ldm.flux.model as flux_model

        if "txt_ids_dims" in {f.name for f in dataclasses.fields(flux_model.FluxParams)}:
            kw = {"txt_ids_dims": [], **kw}  # ComfyUI 0.33 made it required; FLUX.1 has none
        return flux_model.Flux(device="meta", operations=ops, **kw)
    if kind == "chroma":
        import comfy.ldm.chroma.model as chroma

        fields = {f.name for f in dataclasses.fields(chroma.ChromaParams)}
        kw = {**{k: v for k, v in (("txt_ids_dims", []), ("vec_in_dim", None)) if k in fields}, **kw}  # 0.33
        return chroma.Chroma(device="meta", operations=ops, **kw)
    if kind == "mmdit":
        import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

        return mmdit.OpenAISignatureMMDITWrapper(device="meta", operations=ops, **kw)
    if kind == "wan":
        import comfy.ldm.wan.model as wan

        return wan.WanModel(device="meta", operations=ops, **dict(kw, patch_size=tuple(kw["patch_size"])))
    if kind == "qwen_image":
        import comfy.ldm.qwen_image.model as qwen

        return qwen.QwenImageTransformer2DModel(device="meta", operations=ops, **kw)
    if kind == "lumina2":
        import comfy.ldm.lumina.model as lumina

        kw = dict(kw, axes_dims=tuple(kw["axes_dims"]), axes_lens=tuple(kw["axes_lens"]))
        return lumina.NextDiT(device="meta", operations=ops, **kw)
    if kind == "hunyuan_video":
        import comfy.ldm.hunyuan_video.model as hunyuan_video

        if "meanflow_sum" in {f.name for f in dataclasses.fields(hunyuan_video.HunyuanVideoParams)}:
            kw = {"meanflow_sum": False, **kw}  # ComfyUI 0.33 made it required
        return hunyuan_video.HunyuanVideo(device="meta", operations=ops, **kw)
    if kind == "wan21_vae":
        import comfy.ldm.wan.vae as wan_vae
        import torch

        with torch.device("meta"):  # the layout ComfyUI's VAE loader builds (comfy/sd.py)
            return wan_vae.WanVAE(
                **kw, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True]
            )
    if kind == "flux2_vae":
        import comfy.ldm.models.autoencoder as autoencoder
        import torch

        ddconfig = dict(
            double_z=True, z_channels=32, resolution=256, in_channels=3, out_ch=3, ch=kw["decoder_ch"],
            ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0, batch_norm_latent=True,
        )  # fmt: skip
        with torch.device("meta"):
            m = autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=32)
        del m.encoder, m.quant_conv  # left out of the file (see the spec)
        return m
    if kind == "taesd":
        import comfy.taesd.taesd as taesd
        import torch

        with torch.device("meta"):
            return taesd.TAESD(**kw)
    raise ValueError(kind)


def random_state_dict(module, seed: int, dtype):
    """Seeded random tensors for every entry of ``module.state_dict()`` (may live on meta)."""
    import torch

    out = {}
    for key, t in module.state_dict().items():
        shape = tuple(t.shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            continue
        if leaf in ("bias", "running_mean"):
            v = torch.zeros(shape, dtype=dtype)
        elif leaf == "running_var":
            v = torch.ones(shape, dtype=dtype)
        elif leaf == "scale" or (leaf == "weight" and len(shape) == 1) or key in ("vae_scale",):
            v = torch.ones(shape, dtype=dtype)
        elif key == "vae_shift":
            v = torch.zeros(shape, dtype=dtype)
        else:
            g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) & 0x7FFF_FFFF_FFFF)
            v = torch.randn(shape, generator=g, dtype=torch.float32).mul_(WEIGHT_STD).to(dtype)
        out[key] = v.contiguous()
    return out


def _built_by_us(path: Path) -> bool:
    return path.is_file() and RECIPE_KEY in read_safetensors_metadata(path)


def make_room(
    models_root: os.PathLike | str,
    need: int,
    headroom: int = DISK_HEADROOM,
    free=lambda p: shutil.disk_usage(p).free,
) -> None:
    """Have ``need`` + ``headroom`` bytes free beside ``models_root``, deleting other ComfyUI versions' tiny models
    while short.

    Those are a cache (rebuilt in seconds when their version's tests run); only files this module built (with
    its recipe key) in the sibling ``comfy-*`` folders go. Short of ``need`` itself after that: a RuntimeError
    saying how much is missing, before safetensors fails halfway with "No space left on device".
    """
    root = Path(models_root)
    root.mkdir(parents=True, exist_ok=True)
    others = sorted(p for p in root.parent.glob("comfy-*") if p.is_dir() and p.resolve() != root.resolve())
    for other in others:
        if free(root) >= need + headroom:
            return
        files = [p for sub in sorted({s["subdir"] for s in SPECS.values()}) for p in sorted((other / sub).glob("*"))]
        gone = 0
        for p in files:
            if _built_by_us(p):
                gone += p.stat().st_size
                p.unlink()
        if gone:
            print(f"[make_tiny] deleted {other}'s tiny models ({gone / 1e9:.1f} GB) to make room", flush=True)
    if free(root) < need:
        raise RuntimeError(
            f"not enough disk for the tiny models in {root}: {free(root) / 1e9:.1f} GB free, about "
            f"{need / 1e9:.1f} GB needed (other ComfyUI versions' tiny models already deleted)"
        )


def _state_bytes(module, spec) -> int:
    """Bytes of the tensors a recipe's file will hold (from the ``meta`` module: nothing is allocated)."""
    import torch

    itemsize = getattr(torch, spec["dtype"]).itemsize
    shapes = [tuple(t.shape) for t in module.state_dict().values()] + [tuple(s) for s in spec.get("extra", {}).values()]
    return sum(math.prod(s) for s in shapes) * itemsize


def build(comfy_dir, models_root, names):
    """Build the named models in this process (imports ComfyUI from ``comfy_dir``)."""
    _import_comfy(comfy_dir)
    import torch
    from safetensors.torch import save_file

    modules = {name: _meta_module(SPECS[name]) for name in names}
    new = sum(_state_bytes(modules[n], SPECS[n]) for n in names)
    old = sum(model_path(models_root, n).stat().st_size for n in names if model_path(models_root, n).is_file())
    make_room(models_root, max(new - old, 0))
    for name in names:
        spec = SPECS[name]
        t0 = time.time()
        module = modules.pop(name)
        sd = random_state_dict(module, spec["seed"], getattr(torch, spec["dtype"]))
        for key, shape in spec.get("extra", {}).items():  # stored tensors the module itself does not have
            sd[key] = torch.zeros(shape, dtype=getattr(torch, spec["dtype"]))
        del module
        nparams = sum(v.numel() for v in sd.values())
        dest = model_path(models_root, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        save_file(sd, str(tmp), metadata={RECIPE_KEY: recipe_hash(name, comfy_dir), "ecad_tiny_spec": json.dumps(spec)})
        del sd
        os.replace(tmp, dest)
        print(
            f"[make_tiny] {name}: {nparams / 1e6:.1f} M params, {dest.stat().st_size / 1e6:.0f} MB, "
            f"{time.time() - t0:.1f} s -> {dest}",
            flush=True,
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy-dir", default=str(DEFAULT_COMFY_DIR))
    ap.add_argument("--models-root", default=str(DEFAULT_MODELS_ROOT))
    ap.add_argument("--force", action="store_true", help="rebuild even when current")
    ap.add_argument("names", nargs="*", help=f"default: all of {list(SPECS)}")
    a = ap.parse_args(argv)
    names = a.names or list(SPECS)
    todo = names if a.force else [n for n in names if not is_current(a.models_root, n, a.comfy_dir)]
    if todo:
        build(a.comfy_dir, a.models_root, todo)
    for n in names:
        print(f"[make_tiny] {'built' if n in todo else 'cached'}: {model_path(a.models_root, n)}")


if __name__ == "__main__":
    main()
