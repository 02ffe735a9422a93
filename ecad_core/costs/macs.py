"""Analytic compute cost (MACs) of a cache schedule; documented in docs/cost-model.md.

Every unit of a layout (PixArt ``attn1/attn2/ff`` per block, FLUX
``full_attn/full_ff/full_ff_context`` per double block and
``single_attn/single_proj_mlp/single_proj_out`` per single block) costs a fixed
number of MACs each time it is recomputed; a cached unit costs nothing. On top,
every step pays a fixed cost for what always runs: embedders, caption
projection, timestep / adaLN modulation (FLUX's per-block modulation too: the
gates are applied fresh to cached outputs) and the final layer.

Two counting modes:

* ``"ecad"``: linear and conv layers only. This is what ECAD's calflops
  measurement saw (it does not see the QK^T and AV products inside
  ``scaled_dot_product_attention``); it reproduces every stored
  ``metrics.total_macs`` of the reference schedules to the MAC.
* ``"full"``: adds the attention score and value products, 2·Lq·Lk·hidden per
  attention and sample. They grow with the square of the token count
  (share of a full step: ~4% at 256², 34% PixArt / 20% FLUX at 1024², 67% /
  48% at 2048²), so "ecad"-mode figures understate high-resolution cost.

MACs are for one denoiser call on ``batch`` rows; ``batch=2`` is ECAD's
convention (PixArt: the CFG pair of one image; FLUX-dev: two images, one
guidance-distilled pass each). Speedups and fractions do not depend on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import families
from ..errors import ModelMismatchError
from ..schedule import Layout, Schedule, make_layout

MODES = ("ecad", "full")
DEFAULT_BATCH = 2


@dataclass(frozen=True)
class Arch:
    """The numbers of a DiT that its MACs depend on; how they add up is its family's ``step_macs``."""

    name: str
    family: str  # layout family with a cost model: "pixart", "flux" (``ecad_core.families``)
    hidden: int  # model width (heads x head dim)
    heads: int
    depth: int  # PixArt blocks / FLUX double-stream blocks
    single_depth: int = 0  # FLUX single-stream blocks
    mlp_ratio: float = 4.0  # feed-forward inner width / hidden
    patch: int = 2  # PixArt conv patch; FLUX 2x2 latent packing
    vae_scale: int = 8  # pixels per latent pixel
    latent_channels: int = 4  # transformer input channels per latent pixel
    out_channels: int = 8  # output channels per latent pixel (PixArt: eps + learned sigma)
    caption_channels: int = 4096  # T5-XXL width
    text_tokens: int = 120  # default prompt length the pipeline pads to
    pooled_dim: int = 0  # FLUX pooled CLIP width
    guidance_embeds: bool = False  # FLUX-dev's guidance embedder
    # PixArt-α resolution/aspect embedders. None = as the checkpoint for the
    # requested size: only the 1024-MS checkpoint has them, the 256/512 ones do not.
    micro_conditioning: bool | None = False
    time_proj_dim: int = 256  # sinusoidal timestep features
    # numbers only one family's step_macs reads (a new family need not add fields here)
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        fam = families.find(self.family)
        if fam is None or not fam.has_cost_model:
            allowed = " or ".join(repr(f.name) for f in families.registered() if f.has_cost_model)
            raise ValueError(f"architecture {self.name!r}: family must be {allowed}, got {self.family!r}")
        for f in (
            "hidden",
            "heads",
            "depth",
            "patch",
            "vae_scale",
            "latent_channels",
            "out_channels",
            "caption_channels",
            "text_tokens",
            "time_proj_dim",
        ):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"architecture {self.name!r}: {f} must be a positive integer, got {v!r}")
        for f in ("single_depth", "pooled_dim"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"architecture {self.name!r}: {f} must be a non-negative integer, got {v!r}")
        if self.hidden % self.heads:
            raise ValueError(
                f"architecture {self.name!r}: hidden {self.hidden} is not a multiple of heads {self.heads}"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"architecture {self.name!r}: mlp_ratio must be positive, got {self.mlp_ratio!r}")
        why = fam.check_arch(self)
        if why:
            raise ValueError(f"architecture {self.name!r}: {why}")

    # -- derived sizes ----------------------------------------------------
    @property
    def ff_dim(self) -> int:
        return int(self.hidden * self.mlp_ratio)  # as diffusers: int(dim * mult)

    @property
    def token_in(self) -> int:
        return self.latent_channels * self.patch**2

    @property
    def token_out(self) -> int:
        return self.out_channels * self.patch**2

    @property
    def size_multiple(self) -> int:
        return self.vae_scale * self.patch

    def layout(self) -> Layout:
        return make_layout(self.family, *families.get(self.family).arch_counts(self))

    def image_tokens(self, height: int, width: int) -> int:
        _check_size(self, "height", height)
        _check_size(self, "width", width)
        return (height // self.size_multiple) * (width // self.size_multiple)

    # -- constructors -----------------------------------------------------
    @classmethod
    def custom(cls, family: str, name: str | None = None, **numbers: Any) -> Arch:
        """A model of ``family`` from explicit numbers; the rest are the family's default variant's, with the
        family's ``custom_arch`` defaults over them (PixArt: no micro-conditioning unless told)."""
        fam = families.get(family)
        if fam.default_variant is None:
            raise ValueError(f"no cost model for family {family!r}")
        base = ARCHS[fam.default_variant]
        return dataclasses.replace(base, name=name or f"{family}-custom", **{**fam.custom_arch, **numbers})

    @classmethod
    def pixart(cls, name: str = "pixart-custom", **numbers: Any) -> Arch:
        """``custom("pixart", ...)``: the rest default to PixArt-XL-2, micro-conditioning off (set
        ``micro_conditioning=True`` for a 1024-MS-like model)."""
        return cls.custom("pixart", name, **numbers)

    @classmethod
    def flux(cls, name: str = "flux-custom", **numbers: Any) -> Arch:
        """``custom("flux", ...)``: the rest default to FLUX.1-dev."""
        return cls.custom("flux", name, **numbers)

    @classmethod
    def from_diffusers_config(
        cls, config: Mapping[str, Any], name: str | None = None, text_tokens: int | None = None
    ) -> Arch:
        """From a diffusers transformer config (``PixArtTransformer2DModel.config``,
        ``FluxTransformer2DModel.config``): the first family that reads it (``Family.arch_from_diffusers_config``).

        The prompt length is a pipeline setting, not in the config: defaults are
        120 for PixArt (α; pass 300 for Σ's pipeline), 512 for FLUX with a
        guidance embedder (dev) and 256 without (schnell).
        """
        c = dict(config)
        for fam in families.registered():
            numbers = fam.arch_from_diffusers_config(c, name, text_tokens)
            if numbers is not None:
                return cls(family=fam.name, **numbers)
        cls_name = str(c.get("_class_name", ""))
        kinds = ", ".join(f.label for f in families.registered() if f.has_cost_model)
        raise ValueError(
            f"config of {cls_name or 'an unknown class'} is not the transformer config of a family with a cost "
            f"model (families: {kinds})"
        )


_archs_cache: dict[str, Any] = {"key": None, "table": {}}


def _archs() -> dict[str, Arch]:
    """variant name -> ``Arch`` of every variant the families declare numbers for (rebuilt when they change)."""
    declared = [(f, v) for f, v in families.variants() if v.arch]
    key = tuple(id(v) for _, v in declared)
    if key != _archs_cache["key"]:
        _archs_cache.update(key=key, table={v.name: Arch(v.name, f.name, **v.arch) for f, v in declared})
    return _archs_cache["table"]


ARCHS: Mapping[str, Arch] = families.LiveView(_archs)
# Which architecture a schedule is costed with when none is given.
FAMILY_DEFAULT: Mapping[str, str] = families.LiveView(
    lambda: {f.name: f.default_variant for f in families.registered() if f.default_variant}
)


def get_arch(arch: Arch | str) -> Arch:
    if isinstance(arch, Arch):
        return arch
    if isinstance(arch, str) and arch in ARCHS:
        return ARCHS[arch]
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")


def arch_for_schedule(schedule: Schedule) -> Arch:
    """The schedule's model hint if it names a known architecture, else its family's default."""
    if schedule.model is not None and schedule.model in ARCHS:
        return ARCHS[schedule.model]
    if schedule.family in FAMILY_DEFAULT:
        return ARCHS[FAMILY_DEFAULT[schedule.family]]
    raise ValueError(f"no cost model for family {schedule.family!r}; pass an Arch (known: {', '.join(sorted(ARCHS))})")


def _check_size(arch: Arch, what: str, v: Any) -> None:
    m = arch.size_multiple
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < m or v % m:
        kind = families.get(arch.family).label
        raise ValueError(
            f"{what} must be a positive multiple of {m} for {kind} ({arch.name}: VAE "
            f"downsampling {arch.vae_scale} x patch {arch.patch}), got {v!r}"
        )


def _check_int(what: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {v!r}")
    return int(v)


@dataclass(frozen=True)
class StepCosts:
    """MACs of one denoiser call: per unit (when recomputed) and the fixed part."""

    layout: Layout
    unit: np.ndarray  # int64 [n_units], flat layout order
    fixed_parts: dict[str, int]  # what runs every step, by part
    arch: Arch
    height: int
    width: int
    batch: int
    text_tokens: int
    mode: str

    @property
    def fixed(self) -> int:
        return sum(self.fixed_parts.values())

    @property
    def full_step(self) -> int:
        return self.fixed + int(self.unit.sum())

    def by_component(self) -> dict[str, int]:
        """MACs of one full step per component name, summed over blocks."""
        out: dict[str, int] = {}
        for (_, comp), m in zip(self.layout.iter_units(), self.unit.tolist()):
            out[comp] = out.get(comp, 0) + m
        return out


def step_costs(
    arch: Arch | str,
    height: int,
    width: int,
    *,
    batch: int = DEFAULT_BATCH,
    text_tokens: int | None = None,
    mode: str = "ecad",
) -> StepCosts:
    """Per-unit and fixed MACs of one step at ``height`` x ``width`` pixels."""
    a = get_arch(arch)
    if mode not in MODES:
        raise ValueError(f"unknown counting mode {mode!r}; known: {', '.join(MODES)}")
    N = a.image_tokens(height, width)
    B = _check_int("batch", batch)
    T = _check_int("text_tokens", a.text_tokens if text_tokens is None else text_tokens)
    layout = a.layout()
    per_group, fixed = families.get(a.family).step_macs(a, N, T, mode == "full", height, width)
    units = [m for g, per_block in zip(layout.groups, per_group) for _ in range(g.count) for m in per_block]
    unit = np.array(units, dtype=np.int64) * B
    fixed = {k: int(v) * B for k, v in fixed.items()}
    return StepCosts(layout, unit, fixed, a, int(height), int(width), B, T, mode)


def _resolve(schedule: Schedule, arch: Arch | str | None) -> Arch:
    a = arch_for_schedule(schedule) if arch is None else get_arch(arch)
    want = a.layout()
    if schedule.layout != want:
        raise ModelMismatchError(
            f"schedule {schedule.name!r} has {schedule.layout.describe()} but "
            f"architecture {a.name!r} has {want.describe()}"
        )
    return a


def bits_macs(bits: np.ndarray, costs: StepCosts) -> np.ndarray:
    """Total MACs of bit arrays [..., steps, n_units] (e.g. a whole search population).

    Step 0 is counted as computed, as the engine runs it. Float64: exact below
    2**53 MACs, and no int64 overflow for huge runs.
    """
    b = np.asarray(bits, dtype=bool)
    if b.ndim < 2 or b.shape[-1] != costs.layout.n_units:
        raise ValueError(f"bits must have shape (..., steps, {costs.layout.n_units}), got {b.shape}")
    counts = b[..., 1:, :].sum(axis=-2, dtype=np.int64) + 1  # recomputes per unit incl. step 0
    return counts.astype(np.float64) @ costs.unit.astype(np.float64) + b.shape[-2] * float(costs.fixed)


def per_step_macs(
    schedule: Schedule,
    arch: Arch | str | None,
    height: int,
    width: int,
    *,
    batch: int = DEFAULT_BATCH,
    text_tokens: int | None = None,
    mode: str = "ecad",
) -> np.ndarray:
    """MACs of each step (int64 [steps]) under the schedule's effective bits."""
    a = _resolve(schedule, arch)
    c = step_costs(a, height, width, batch=batch, text_tokens=text_tokens, mode=mode)
    return schedule.effective_bits().astype(np.int64) @ c.unit + c.fixed


def schedule_macs(
    schedule: Schedule,
    arch: Arch | str | None,
    height: int,
    width: int,
    *,
    batch: int = DEFAULT_BATCH,
    text_tokens: int | None = None,
    mode: str = "ecad",
) -> int:
    """Total MACs over all steps (exact integer); ``arch=None`` infers it from the schedule."""
    return sum(
        int(x) for x in per_step_macs(schedule, arch, height, width, batch=batch, text_tokens=text_tokens, mode=mode)
    )


def no_cache_macs(
    steps: int | Schedule,
    arch: Arch | str | None,
    height: int,
    width: int,
    *,
    batch: int = DEFAULT_BATCH,
    text_tokens: int | None = None,
    mode: str = "ecad",
) -> int:
    """MACs of ``steps`` uncached steps (or as many as a given schedule has)."""
    if isinstance(steps, Schedule):
        arch, steps = _resolve(steps, arch), steps.steps
    elif arch is None:
        raise ValueError("arch is required when steps is a number")
    n = _check_int("steps", steps)
    return n * step_costs(arch, height, width, batch=batch, text_tokens=text_tokens, mode=mode).full_step


def fraction_of_full(
    schedule: Schedule,
    arch: Arch | str | None,
    height: int,
    width: int,
    *,
    text_tokens: int | None = None,
    mode: str = "ecad",
) -> float:
    """Schedule MACs / no-cache MACs: the search's compute objective (batch cancels out)."""
    kw: dict[str, Any] = dict(text_tokens=text_tokens, mode=mode)
    return schedule_macs(schedule, arch, height, width, **kw) / no_cache_macs(schedule, arch, height, width, **kw)


def expected_speedup(
    schedule: Schedule,
    arch: Arch | str | None,
    height: int,
    width: int,
    *,
    text_tokens: int | None = None,
    mode: str = "ecad",
) -> float:
    """No-cache MACs / schedule MACs: the speedup if time were proportional to MACs."""
    return 1.0 / fraction_of_full(schedule, arch, height, width, text_tokens=text_tokens, mode=mode)


def cost_breakdown(
    schedule: Schedule,
    arch: Arch | str | None,
    height: int,
    width: int,
    *,
    batch: int = DEFAULT_BATCH,
    text_tokens: int | None = None,
    mode: str = "ecad",
) -> dict[str, Any]:
    """Everything at once, JSON-friendly: per step, per component, fixed parts, totals."""
    a = _resolve(schedule, arch)
    c = step_costs(a, height, width, batch=batch, text_tokens=text_tokens, mode=mode)
    eff = schedule.effective_bits()
    steps = (eff.astype(np.int64) @ c.unit + c.fixed).tolist()
    comp_total: dict[str, int] = {}
    counts = eff.sum(axis=0, dtype=np.int64)
    for (_, comp), n, m in zip(schedule.layout.iter_units(), counts.tolist(), c.unit.tolist()):
        comp_total[comp] = comp_total.get(comp, 0) + n * m
    total, full = sum(steps), schedule.steps * c.full_step
    return {
        "arch": a.name,
        "mode": mode,
        "height": c.height,
        "width": c.width,
        "batch": c.batch,
        "text_tokens": c.text_tokens,
        "steps": schedule.steps,
        "total_macs": total,
        "no_cache_macs": full,
        "fraction_of_full": total / full,
        "expected_speedup": full / total,
        "full_step_macs": c.full_step,
        "fixed_step_macs": c.fixed,
        "per_step_macs": steps,
        "by_component": comp_total,
        "fixed_parts": {k: v * schedule.steps for k, v in c.fixed_parts.items()},
    }
