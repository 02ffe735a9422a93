"""Any model family the pack's ComfyUI adapters serve, on its tiny test checkpoint, for the CPU benches.

A family's models are the tiny checkpoints of ``tests/comfy_harness/make_tiny.py`` (its ``SPECS``) whose
diffusion model that family's adapter serves (asked of ``nodes.adapters.adapter_of`` on the model built on
the ``meta`` device, so nothing is loaded to find them). Each is loaded as ComfyUI's ``UNETLoader`` loads it
(``comfy.sd.load_diffusion_model``, fp32 on the CPU) and called as ComfyUI's samplers call it:
``BaseModel.apply_model`` with the conditioning its own ``extra_conds`` builds from a random text embedding
(and pooled output and guidance where the recipe's constructor arguments name their widths). The schedules
are the family's own search seeds (``ecad_core/search/sampling.py``: every-2 for all families, attention
every 2 where the family record names attention components) and the shipped presets whose layout fits.

Adding a family needs nothing here: its tiny recipe in ``make_tiny.py`` (whose ``_meta_module`` builds it)
and its adapter are enough. Where the recipe's constructor arguments do not name the conditioning widths
under a usual name (``CONTEXT_KEYS``, ``POOLED_KEYS``), the recipe may say them: ``"cond": {"dim": ...,
"pooled": ...}`` beside ``kwargs``.
"""

from __future__ import annotations

import importlib
import sys

import torch

from . import models
from .common import REPO, SCHEDULES

# constructor arguments naming the text embedding's width, and the pooled vector's, in ComfyUI's model classes
CONTEXT_KEYS = (
    "caption_channels",
    "context_in_dim",
    "text_dim",
    "context_dim",
    "text_states_dim",
    "joint_attention_dim",
)
POOLED_KEYS = ("vec_in_dim", "adm_in_channels", "pooled_projection_dim", "text_states_dim_2")
TEXT_TOKENS = 8
SIZES = (64, 128, 192, 256, 320, 384, 448, 512)  # pixels tried in turn: the smallest size the model runs at


def make_tiny():
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    return importlib.import_module("comfy_harness.make_tiny")


def tiny_models(family: str, adapters) -> list[str]:
    """The tiny checkpoints (``make_tiny.SPECS`` names) whose diffusion model ``family``'s adapter serves."""
    mt = make_tiny()
    out = []
    for name, spec in mt.SPECS.items():
        if spec["subdir"] != "diffusion_models":
            continue
        try:
            dm = mt._meta_module(spec)
        except ValueError:  # a kind this ComfyUI cannot build
            continue
        try:
            fam = adapters.adapter_of(dm).family
        except Exception:  # noqa: BLE001 - a model no adapter serves
            continue
        if fam == family:
            out.append(name)
    return out


def families(adapters) -> list[str]:
    """Every family the adapters serve."""
    return sorted({a.family for a in adapters.adapters()})


def cond_dims(spec: dict) -> tuple[int, int]:
    """(text embedding width, pooled width or 0) of a tiny recipe."""
    if "cond" in spec:
        return int(spec["cond"]["dim"]), int(spec["cond"].get("pooled", 0))
    kw = spec["kwargs"]
    dim = next((kw[k] for k in CONTEXT_KEYS if kw.get(k)), None)
    if dim is None and isinstance(kw.get("context_embedder_config"), dict):  # SD3's MMDiT
        dim = kw["context_embedder_config"]["params"]["in_features"]
    if dim is None:
        raise SystemExit(f"bench: the tiny recipe {spec} names no text-embedding width; add 'cond': {{'dim': ...}}")
    return int(dim), int(next((kw[k] for k in POOLED_KEYS if kw.get(k)), 0))


def load(name: str, *, steps: int, res: int | None = None, seed: int = 0) -> models.Denoiser:
    """The tiny checkpoint ``name`` as a ``Denoiser``: batch 1, ``steps`` calls along a flow/linear sigma ramp, at
    ``res``² (None: the smallest of ``SIZES`` the model runs at)."""
    import comfy.sd

    mt = make_tiny()
    path = mt.ensure_models(names=[name], comfy_dir=str(_comfy_dir()))[name]
    mp = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float32})
    bm = mp.model
    dm = bm.diffusion_model.to("cpu")
    dim, pooled_dim = cond_dims(mt.SPECS[name])
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, TEXT_TOKENS, dim, generator=g)
    pooled = torch.randn(1, pooled_dim, generator=g) if pooled_dim else None
    lf = bm.latent_format
    ms = bm.model_sampling
    sigmas = torch.linspace(float(ms.sigma_max), float(ms.sigma_min), steps + 1)[:-1]  # never 0: every call counts
    opts: dict = {"patches_replace": {}}

    def build(px):
        shape = (1, lf.latent_channels) + (1,) * (getattr(lf, "latent_dimensions", 2) - 2) + (px // 8, px // 8)
        x0 = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
        params = {"noise": x0, "device": torch.device("cpu"), "width": px, "height": px, "cross_attn": context}
        params.update(prompt_type="positive", guidance=3.5)
        if pooled is not None:
            params["pooled_output"] = pooled
        # area None: the whole latent (a concatenated condition, CONDNoiseShape, needs the argument)
        conds = {
            k: c.process_cond(batch_size=1, device="cpu", area=None).cond for k, c in bm.extra_conds(**params).items()
        }

        def call(x, i):
            return bm.apply_model(x, sigmas[i].expand(1), transformer_options=dict(opts), **conds)

        return x0, call

    with torch.no_grad():
        for px in (res,) if res else SIZES:
            x0, call = build(px)
            try:
                call(x0, 0)
                break
            except Exception:  # below the model's smallest size: try the next
                if res or px == SIZES[-1]:
                    raise
    den = models.Denoiser(
        f"ComfyUI {type(dm).__name__} ({name}) {px}²", dm, x0, call, steps, [], {"res": px, "tiny_model": name}
    )
    den.transformer_options = opts
    return den


def _comfy_dir():
    from .bench_comfy import COMFY_DIR

    return COMFY_DIR


def seed_schedules(layout, steps: int, schedule_mod) -> list:
    """The family's search seeds at ``steps`` steps: every-2 for all, and attention every 2 where the family
    record names attention components (else the first unit type every 2), as the pack's own schedules."""
    sampling = importlib.import_module(schedule_mod.__name__.rpartition(".")[0] + ".search.sampling")
    problem = importlib.import_module(schedule_mod.__name__.rpartition(".")[0] + ".search.problem")
    fams = importlib.import_module(schedule_mod.__name__.rpartition(".")[0] + ".families")
    space = problem.GenomeSpace(layout, steps)
    out = [sampling.recompute_all_every_n(space, 2)]
    fam = fams.find(layout.family)
    types = sampling.unit_types(layout)
    att = [t for t in types if t[1] in (fam.attention_components if fam is not None else ())]
    if att:
        out.append(sampling.types_every_n(space, att, 2, "cache-attention-every-2"))
    elif len(types) > 1:
        out.append(sampling.types_every_n(space, types[:1], 2))
    return out


def fitting_presets(layout, schedule_mod) -> list[str]:
    """Shipped presets (``schedules/*.json`` named by their model) whose layout is this model's."""
    out = []
    for p in sorted(SCHEDULES.glob("*.json")):
        try:
            s = schedule_mod.load_schedule(p)
        except Exception:  # noqa: BLE001 - a file of another format
            continue
        if s.layout == layout and p.stem.rsplit("-", 1)[-1] in ("fast", "faster", "fastest"):
            out.append(p.stem)
    return out
