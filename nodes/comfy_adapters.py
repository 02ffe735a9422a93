"""Which parts of ComfyUI's DiTs are ECAD units, and how they are hooked.

* PixArt-α/Σ (``comfy.ldm.pixart``): no block hook exists, so each block's
  ``forward`` is replaced through ``ModelPatcher.add_object_patch`` (ComfyUI sets
  and restores it with the model) by a re-statement that runs ``attn``,
  ``cross_attn`` and ``mlp`` as units and builds a unit's input only when it
  computes (``comfy_pixart.py``; each block checked bit for bit against
  ComfyUI's block on its first call). Where another node already patched a
  block's ``forward``, that block's component modules are wrapped instead.
  Weights, LoRA keys and low-VRAM loading are untouched.
* FLUX.1 (``comfy.ldm.flux``): ECAD's units need the block internals
  (attention is inline), so the official ``patches_replace["dit"]`` double and
  single block hooks run the block: the original block whenever the attention
  unit computes (its outputs are captured through object-patched ``proj`` /
  ``linear1`` / ``linear2`` forwards), and a re-statement of the block only when
  a cached output is reused. The re-statement is checked against the original
  block at each block's first call; a difference raises SelfCheckError.
* Other DiTs with ``patches_replace["dit"]`` hooks (SD3/MMDiT, Wan, HunyuanVideo,
  Qwen-Image, Chroma, LTX-Video): one unit per block that reuses the block's
  residual (output minus input), family ``dit_blocks``.

Every patch ECAD installs is marked (``ecad_patch``), so that a second Apply
node in a chain removes all of the first one's state from its clone
(``remove_earlier_apply``) and its schedule alone runs, on every family.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..ecad_core.engine import signature
from ..ecad_core.engine.compiling import outside_compile
from ..ecad_core.engine.cuda_graphs import GraphMode
from ..ecad_core.errors import ModelMismatchError, SelfCheckError
from ..ecad_core.hooks import check_once, restatement_mismatch
from ..ecad_core.schedule import Layout, make_layout
from .comfy_pixart import PixArtBlocks

log = logging.getLogger("ecad")


def comfy_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except Exception:  # noqa: BLE001 - a ComfyUI without the version module (or a broken one)
        return "unknown"


def _mro_names(obj) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


@dataclass
class ComfyAdapter:
    """How a ComfyUI model is patched: its layout and a function that installs the hooks."""

    kind: str
    layout: Layout
    install: Callable  # (model_patcher, run) -> None
    arch_hint: str | None = None
    notes: list[str] = field(default_factory=list)
    # whether each unit's computation runs through the engine on its own, so the latency objective can time
    # it; not for FLUX, whose attention units run inside ComfyUI's own blocks
    units_timeable: bool = False
    # keyword arguments of the diffusion model's forward that are graph inputs, when its forward uses
    # nothing else (CUDA-graph mode, nodes/comfy_graphs.py); None: graphs not offered
    graph_kwargs: tuple | None = None
    graph_prepare: Callable | None = None  # (args, kwargs) -> (args, kwargs): inputs made from host data


WRAPPER_KEY = "ecad"  # the key of ECAD's OUTER_SAMPLE / APPLY_MODEL wrappers


def mark(fn):
    """``fn`` marked as an ECAD patch (object patch or dit block patch)."""
    fn.ecad_patch = True
    return fn


def is_ecad_patch(fn) -> bool:
    if getattr(fn, "ecad_patch", False):
        return True
    # the CUDA-graph forward (nodes/comfy_graphs.py): a GraphMode's method, wrapped by outside_compile
    inner = getattr(fn, "__wrapped__", fn)
    return isinstance(getattr(inner, "__self__", None), GraphMode)


def remove_earlier_apply(mp) -> str | None:
    """Remove from the clone ``mp`` everything an earlier Apply ECAD node put there: its object patches (block
    forwards, module forwards, the CUDA-graph forward), its dit block patches, its wrappers and its run.
    Another node's patches stay. Returns the earlier schedule's name (None: there was none)."""
    import comfy.patcher_extension as pe

    for key in [k for k, fn in mp.object_patches.items() if is_ecad_patch(fn)]:
        del mp.object_patches[key]
    topts = mp.model_options.setdefault("transformer_options", {})
    dit = topts.get("patches_replace", {}).get("dit", {})
    for key in [k for k, fn in dit.items() if is_ecad_patch(fn)]:
        del dit[key]
    # else both runs' wrappers run: the earlier engine sees no unit calls (its hooks were replaced), so the
    # PixArt unit check fails ("self-check failed") and elsewhere an empty run is logged after the later one
    for kind in (pe.WrappersMP.OUTER_SAMPLE, pe.WrappersMP.APPLY_MODEL):
        mp.remove_wrappers_with_key(kind, WRAPPER_KEY)
    earlier = topts.pop("ecad", None)
    return None if earlier is None else getattr(earlier, "label", "?")


# --------------------------------------------------------------------------- PixArt
PIXART_UNITS = (("attn1", "attn"), ("attn2", "cross_attn"), ("ff", "mlp"))


def _unit_forward(module, run, unit):
    cls_forward = type(module).forward
    engine = run.engine

    def forward(*args, **kwargs):
        return engine.call(unit, cls_forward, (module,) + args, kwargs)

    return mark(outside_compile(forward))


def _pixart_adapter(dm) -> ComfyAdapter:
    n = len(dm.blocks)
    if getattr(dm, "pe_interpolation", None) == 0 and getattr(dm, "pe_precision", None) is None:
        # ComfyUI guesses pe_interpolation = input_size // 64 from a stored pos_embed: 0 for 256 px checkpoints
        # (PixArt-XL-2-256x256); the positional embedding then divides by zero and every image is NaN (black)
        raise ModelMismatchError(
            f"ECAD: ComfyUI {comfy_version()} loaded this PixArt checkpoint with pe_interpolation 0 (its stored "
            "pos_embed is for 256 px, and ComfyUI's guess input_size // 64 rounds to 0), so its positional "
            "embedding divides by zero and every image comes out NaN/black, with or without ECAD. ECAD refuses "
            "to cache a model that cannot produce an image: use a PixArt checkpoint for 512 px or 1024 px (the "
            "256 px presets transfer across sizes)"
        )

    def install(mp, run):
        blocks = PixArtBlocks(dm, run, comfy_version())
        taken = getattr(mp, "object_patches", {})
        unit = 0
        for i, blk in enumerate(dm.blocks):
            mods = []
            for _, attr in PIXART_UNITS:
                mod = getattr(blk, attr, None)
                if not isinstance(mod, torch.nn.Module):
                    raise SelfCheckError(
                        f"ECAD: ComfyUI {comfy_version()}'s PixArt block {i} has no '{attr}' module; this "
                        f"version of ComfyUI is not supported by this ECAD release"
                    )
                mods.append((attr, mod))
            key = f"diffusion_model.blocks.{i}.forward"
            # the block re-statement (an earlier ECAD Apply's is not another node's: this one replaces it)
            if key not in taken or is_ecad_patch(taken[key]):
                mp.add_object_patch(key, blocks.forward_for(i))
                unit += len(mods)
                continue
            # another node replaced this block's forward: keep it, and cache at the component modules
            log.info(
                "ECAD: PixArt block %d's forward is already patched by another node; caching its "
                "attn/cross_attn/mlp modules instead",
                i,
            )
            for attr, mod in mods:
                mp.add_object_patch(f"diffusion_model.blocks.{i}.{attr}.forward", _unit_forward(mod, run, unit))
                unit += 1

        def check_units_ran():
            # every unit must have been called at step 0, else the block no longer calls these modules
            if int(run.engine.stats.computed[0]) < unit:
                raise SelfCheckError(
                    f"ECAD self-check failed on ComfyUI {comfy_version()}: PixArt blocks did not call their "
                    f"attn/cross_attn/mlp modules as expected ({int(run.engine.stats.computed[0])} of {unit} "
                    f"units ran); refusing to produce a silently different image"
                )

        run.first_eval_checks.append(check_units_ran)

        def check_size(latent):
            # ComfyUI's PixArt: base_size = round(((H + W) // 2) / 64) * 64 // patch in latent pixels; 0 below
            # (W+H)/2 = 384 px, where it raises ZeroDivisionError deep in its positional embedding
            if getattr(latent, "ndim", 0) == 4 and round(((latent.shape[-2] + latent.shape[-1]) // 2) / 64) == 0:
                h, w = latent.shape[-2] * 8, latent.shape[-1] * 8
                raise ModelMismatchError(
                    f"ECAD: ComfyUI {comfy_version()}'s PixArt cannot sample {w}x{h}: its positional embedding "
                    f"needs (width + height) / 2 >= 384 px (it divides by zero below, with or without ECAD); "
                    f"use e.g. 512x512 (the 256 px ECAD presets transfer across sizes)"
                )

        run.pre_run_checks.append(check_size)

    arch = "pixart-alpha" if getattr(dm, "micro_conditioning", False) else "pixart-sigma"
    return ComfyAdapter(
        f"ComfyUI PixArt ({arch}, {n} blocks)",
        make_layout("pixart", n),
        install,
        arch,
        units_timeable=True,
        # PixArtMS.forward(x, timesteps, context, c_size, c_ar, **ignored)
        graph_kwargs=("context", "c_size", "c_ar"),
        graph_prepare=_pixart_microconds(dm),
    )


def _pixart_microconds(dm):
    """PixArt-α's fallback size/aspect conditioning, made before the forward (as PixArtMS.forward makes it)
    so that a CUDA-graph capture does not copy host data; the model then sees the same tensors."""

    def prepare(args, kwargs):
        if not getattr(dm, "micro_conditioning", False) or not args:
            return args, kwargs
        if kwargs.get("c_size") is not None and kwargs.get("c_ar") is not None:
            return args, kwargs
        x = args[0]
        B, _, H, W = x.shape
        kwargs = dict(kwargs)
        if kwargs.get("c_size") is None:
            kwargs["c_size"] = torch.tensor([H * 8, W * 8], dtype=x.dtype, device=x.device).repeat(B, 1)
        if kwargs.get("c_ar") is None:
            kwargs["c_ar"] = torch.tensor([H / W], dtype=x.dtype, device=x.device).repeat(B, 1)
        return args, kwargs

    return prepare


# --------------------------------------------------------------------------- FLUX
def _capture_forward(module, run, key):
    cls_forward = type(module).forward

    def forward(*args, **kwargs):
        out = cls_forward(module, *args, **kwargs)
        cap = run.capture
        if cap is not None:
            cap[key] = (args, out)
        return out

    return mark(forward)


class _FluxBlocks:
    """FLUX double/single block hooks for one patched model."""

    def __init__(self, dm, run):
        from comfy.ldm.flux.layers import apply_mod  # noqa: F401 (checked at install)
        from comfy.ldm.flux.math import attention  # noqa: F401

        self.dm = dm
        self.run = run
        self.nd = len(dm.double_blocks)

    def _patch(self, blk, kind, check, body):
        """``body(engine, args, extra)`` as a dit block patch: ComfyUI's block while the engine is off, and
        every block checked at its first call, once per process (ecad_core.hooks.base: a mismatch can be
        data-dependent)."""
        run, checked = self.run, [False]

        def patch(args, extra):
            eng = run.engine
            if not eng.active_for():
                return extra["original_block"](args)
            if not checked[0]:
                check_once(blk, (_FluxBlocks, kind), type(blk).forward, args["img"], lambda: check(blk, args, extra))
                checked[0] = True
            return body(eng, args, extra)

        return mark(outside_compile(patch))

    # units: double block i -> 3i + (attn, ff, ff_context); single j -> 3*nd + 3j + (attn, mlp, proj_out)
    def double_patch(self, i):
        blk = self.dm.double_blocks[i]
        u_attn = 3 * i
        run = self.run

        def body(eng, args, extra):
            sig = signature(args["img"], args["txt"])
            cached = eng.fetch(u_attn, sig) if eng.wants_reuse(u_attn) else None
            if cached is None:
                out, cap = self._captured(extra["original_block"], args)
                eng.store(u_attn, sig, (cap["img_proj"][1], cap["txt_proj"][1]))
                return out
            return self._double_reuse(blk, args, cached, mlp)

        def mlp(k, module, make_input, like):
            # a reused MLP unit's norm + modulation is not built (the module's own forward: its object patch
            # would route it through the engine a second time)
            fwd = type(module).forward
            return run.engine.call_lazy(u_attn + k, lambda: fwd(module, make_input()), (like,))

        return self._patch(blk, "double", self._check_double, body)

    def _captured(self, original, args):
        run = self.run
        run.capture = {}
        try:
            out = original(args)
            cap = run.capture
        finally:
            run.capture = None
        return out, cap

    @staticmethod
    def _double_reuse(blk, args, cached, mlp=None):
        """The double block with its attention outputs ``cached``. ``mlp(k, module, make_input, like)`` runs
        MLP unit k (1: img, 2: txt) and builds its input only if the unit computes; default: always built."""
        from comfy.ldm.flux.layers import apply_mod

        if mlp is None:
            mlp = lambda k, module, make_input, like: module(make_input())
        img, txt, vec = args["img"], args["txt"], args["vec"]
        img_a, txt_a = cached
        if blk.modulation:
            img_mod1, img_mod2 = blk.img_mod(vec)
            txt_mod1, txt_mod2 = blk.txt_mod(vec)
        else:
            (img_mod1, img_mod2), (txt_mod1, txt_mod2) = vec
        img += apply_mod(img_a, img_mod1.gate, None, None)
        img += apply_mod(
            mlp(1, blk.img_mlp, lambda: apply_mod(blk.img_norm2(img), (1 + img_mod2.scale), img_mod2.shift, None), img),
            img_mod2.gate,
            None,
            None,
        )
        txt += apply_mod(txt_a, txt_mod1.gate, None, None)
        txt += apply_mod(
            mlp(2, blk.txt_mlp, lambda: apply_mod(blk.txt_norm2(txt), (1 + txt_mod2.scale), txt_mod2.shift, None), txt),
            txt_mod2.gate,
            None,
            None,
        )
        if txt.dtype == torch.float16:
            txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
        return {"img": img, "txt": txt}

    def _check_double(self, blk, args, extra):
        with self.run.engine.paused():  # the check must not touch the cache or the statistics
            a1 = {**args, "img": args["img"].clone(), "txt": args["txt"].clone()}
            ref, cap = self._captured(extra["original_block"], a1)
            if "img_proj" not in cap or "txt_proj" not in cap:
                raise SelfCheckError(
                    f"ECAD self-check failed on ComfyUI {comfy_version()}: the FLUX double block did not call "
                    f"img_attn.proj / txt_attn.proj; this ComfyUI version is not supported"
                )
            a2 = {**args, "img": args["img"].clone(), "txt": args["txt"].clone()}
            mine = self._double_reuse(blk, a2, (cap["img_proj"][1], cap["txt_proj"][1]))
        for k in ("img", "txt"):
            why = restatement_mismatch(ref[k], mine[k])
            if why:
                raise SelfCheckError(
                    f"ECAD self-check failed on ComfyUI {comfy_version()}: the FLUX double block re-statement "
                    f"differs from ComfyUI's block ({self._where(blk)}, {k}: {why}); refusing to run"
                )

    def single_patch(self, j):
        blk = self.dm.single_blocks[j]
        base = 3 * self.nd + 3 * j
        u_attn, u_mlp, u_proj = base, base + 1, base + 2

        def body(eng, args, extra):
            sig = signature(args["img"])
            vals = {u: (eng.fetch(u, sig) if eng.wants_reuse(u) else None) for u in (u_attn, u_mlp, u_proj)}
            if all(v is None for v in vals.values()):
                out, cap = self._captured(extra["original_block"], args)
                for u, part in zip((u_attn, u_mlp, u_proj), self._single_parts(blk, cap)):
                    eng.store(u, sig, compact(part) if eng.keeps(u) else part)
                return out

            def store(u):
                return lambda v: eng.store(u, sig, compact(v) if eng.keeps(u) else v)

            return self._single_forward(
                blk, args, vals[u_attn], vals[u_mlp], vals[u_proj], store(u_attn), store(u_mlp), store(u_proj)
            )

        return self._patch(blk, "single", self._check_single, body)

    @staticmethod
    def _single_parts(blk, cap):
        if "linear1" not in cap or "linear2" not in cap:
            raise SelfCheckError(
                f"ECAD self-check failed on ComfyUI {comfy_version()}: the FLUX single block did not call "
                f"linear1 / linear2; this ComfyUI version is not supported"
            )
        h = blk.hidden_size
        l2_in = cap["linear2"][0][0]
        return l2_in[..., :h], cap["linear1"][1][..., 3 * h :], cap["linear2"][1]

    @staticmethod
    def _single_forward(blk, args, attn, mlp, proj, store_attn, store_mlp, store_proj):
        """The single block with any of its three units served from the cache (None = compute)."""
        from comfy.ldm.flux.layers import apply_mod
        from comfy.ldm.flux.math import attention

        x, vec = args["img"], args["vec"]
        mod = blk.modulation(vec)[0] if blk.modulation else vec
        if attn is None or mlp is None:
            # linear1 fuses q/k/v and the MLP input: when only one of them is needed, only its rows run
            x_mod = apply_mod(blk.pre_norm(x), (1 + mod.scale), mod.shift, None)
            h3 = 3 * blk.hidden_size
            if attn is None and mlp is None:
                qkv, mlp_new = torch.split(blk.linear1(x_mod), [h3, blk.mlp_hidden_dim_first], dim=-1)
            elif attn is None:
                qkv = _linear_rows(blk.linear1, x_mod, 0, h3)
            else:
                mlp_new = _linear_rows(blk.linear1, x_mod, h3, h3 + blk.mlp_hidden_dim_first)
            if attn is None:
                q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, blk.num_heads, -1).permute(2, 0, 3, 1, 4)
                q, k = blk.norm(q, k, v)
                attn = attention(
                    q,
                    k,
                    v,
                    pe=args["pe"],
                    mask=args.get("attn_mask"),
                    transformer_options=args.get("transformer_options", {}),
                )
                store_attn(attn)
            if mlp is None:
                mlp = mlp_new
                store_mlp(mlp)
        if proj is None:
            proj = blk.linear2(torch.cat((attn, blk.mlp_act(mlp)), 2))
            store_proj(proj)
        x += apply_mod(proj, mod.gate, None, None)
        if x.dtype == torch.float16:
            x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
        return {"img": x}

    def _check_single(self, blk, args, extra):
        noop = lambda v: None
        with self.run.engine.paused():
            ref, cap = self._captured(extra["original_block"], {**args, "img": args["img"].clone()})
            self._single_parts(blk, cap)
            mine = self._single_forward(blk, {**args, "img": args["img"].clone()}, None, None, None, noop, noop, noop)
        why = restatement_mismatch(ref["img"], mine["img"])
        if why:
            raise SelfCheckError(
                f"ECAD self-check failed on ComfyUI {comfy_version()}: the FLUX single block re-statement differs "
                f"from ComfyUI's block ({self._where(blk)}: {why}); refusing to run"
            )

    def _where(self, blk) -> str:
        for name in ("double_blocks", "single_blocks"):
            for i, b in enumerate(getattr(self.dm, name)):
                if b is blk:
                    return f"{name}.{i}"
        return type(blk).__name__


def compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a copy when it is a view into a larger tensor: a kept part of FLUX's fused linear1
    output (or linear2 input) would otherwise hold the whole fused tensor alive, twice the cache memory."""
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.contiguous() if not t.is_contiguous() else t.clone()
    return t


def _linear_rows(lin, x, start: int, stop: int):
    """Output features start:stop of a ComfyUI linear layer, computing only those rows of its weight.

    Only for a plain resident layer (weights in x's dtype and device, no casting, LoRA weight functions
    or quantised weights); otherwise the layer runs whole (through ComfyUI's casting) and is sliced.
    """
    w, b = lin.weight, lin.bias
    if (
        getattr(lin, "comfy_cast_weights", False)
        or getattr(lin, "weight_function", None)
        or getattr(lin, "bias_function", None)
        or type(w) is not torch.nn.Parameter
        or w.dtype != x.dtype
        or w.device != x.device
    ):
        return lin(x)[..., start:stop]
    return torch.nn.functional.linear(x, w[start:stop], None if b is None else b[start:stop])


def _flux_adapter(dm) -> ComfyAdapter:
    nd, ns = len(dm.double_blocks), len(dm.single_blocks)

    def install(mp, run):
        try:
            fb = _FluxBlocks(dm, run)
        except ImportError as e:
            raise SelfCheckError(
                f"ECAD: ComfyUI {comfy_version()} lacks the FLUX internals this adapter uses ({e})"
            ) from None
        run.capture = None
        for i, blk in enumerate(dm.double_blocks):
            for attr in ("img_attn.proj", "txt_attn.proj"):
                m = blk.get_submodule(attr)
                mp.add_object_patch(
                    f"diffusion_model.double_blocks.{i}.{attr}.forward",
                    _capture_forward(m, run, attr.replace("_attn.", "_")),
                )
            mp.add_object_patch(
                f"diffusion_model.double_blocks.{i}.img_mlp.forward", _unit_forward(blk.img_mlp, run, 3 * i + 1)
            )
            mp.add_object_patch(
                f"diffusion_model.double_blocks.{i}.txt_mlp.forward", _unit_forward(blk.txt_mlp, run, 3 * i + 2)
            )
            mp.set_model_patch_replace(fb.double_patch(i), "dit", "double_block", i)
        for j, blk in enumerate(dm.single_blocks):
            for attr in ("linear1", "linear2"):
                mp.add_object_patch(
                    f"diffusion_model.single_blocks.{j}.{attr}.forward", _capture_forward(getattr(blk, attr), run, attr)
                )
            mp.set_model_patch_replace(fb.single_patch(j), "dit", "single_block", j)

    arch = "flux-dev" if getattr(getattr(dm, "params", None), "guidance_embed", False) else "flux-schnell"
    return ComfyAdapter(
        f"ComfyUI FLUX ({arch}, {nd} double + {ns} single blocks)", make_layout("flux", nd, ns), install, arch
    )


# --------------------------------------------------------------------------- other DiTs, block level
# class name (anywhere in the MRO) -> (attribute of double-type blocks, attribute of single blocks)
GENERIC_DITS = {
    "MMDiT": ("joint_blocks", None),  # SD3 / SD3.5
    "WanModel": ("blocks", None),  # Wan 2.x
    "HunyuanVideo": ("double_blocks", "single_blocks"),
    "QwenImageTransformer2DModel": ("transformer_blocks", None),
    "Chroma": ("double_blocks", "single_blocks"),
    "LTXVModel": ("transformer_blocks", None),
}


def _block_patch(run, unit):
    def patch(args, extra):
        eng = run.engine
        if not eng.active_for():
            return extra["original_block"](args)
        keys = [k for k in ("img", "txt") if isinstance(args.get(k), torch.Tensor)]
        sig = signature(*(args[k] for k in keys))
        res = eng.fetch(unit, sig) if eng.wants_reuse(unit) else None
        if res is not None:
            out = {}
            for k, r in res.items():
                out[k] = None if r is None else args[k] + r
            return out
        inputs = {k: args[k].clone() for k in keys}  # blocks may update their inputs in place
        out = extra["original_block"](args)
        res = {}
        for k, v in out.items():
            if v is None:
                res[k] = None
            elif k in inputs and v.shape == inputs[k].shape:
                res[k] = v - inputs[k]
            else:
                raise SelfCheckError(
                    f"ECAD: block output {k!r} cannot be expressed as a residual of its input "
                    f"(shape {tuple(v.shape)}); block caching is not supported for this model"
                )
        eng.store(unit, sig, res)
        return out

    return mark(outside_compile(patch))


def _generic_adapter(dm, double_attr, single_attr) -> ComfyAdapter:
    nd = len(getattr(dm, double_attr))
    ns = len(getattr(dm, single_attr)) if single_attr else 0

    def install(mp, run):
        for i in range(nd):
            mp.set_model_patch_replace(_block_patch(run, i), "dit", "double_block", i)
        for j in range(ns):
            mp.set_model_patch_replace(_block_patch(run, nd + j), "dit", "single_block", j)

    return ComfyAdapter(
        f"ComfyUI {type(dm).__name__} ({nd}{f' + {ns} single' if ns else ''} blocks, block-level units)",
        make_layout("dit_blocks", nd, ns),
        install,
        None,
        units_timeable=True,
    )


def adapter_for(model_patcher) -> ComfyAdapter:
    """The adapter for the diffusion model inside a ComfyUI MODEL; a clear error if none fits."""
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if dm is None:
        raise ModelMismatchError("ECAD: the MODEL input has no diffusion_model (is it a diffusion model?)")
    names = _mro_names(dm)
    if "PixArtMS" in names or "PixArt" in names:
        return _pixart_adapter(dm)
    if "Flux" in names and "Chroma" not in names and hasattr(dm, "double_blocks") and hasattr(dm, "single_blocks"):
        return _flux_adapter(dm)
    for cls, (d, s) in GENERIC_DITS.items():
        if cls in names and hasattr(dm, d):
            return _generic_adapter(dm, d, s)
    raise ModelMismatchError(
        f"ECAD does not support {type(dm).__name__} models yet: supported are PixArt-α/Σ, FLUX.1, and at "
        f"block level {', '.join(GENERIC_DITS)}"
    )
