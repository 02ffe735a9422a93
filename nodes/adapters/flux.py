"""FLUX.1 on ComfyUI (``comfy.ldm.flux.model.Flux``, not Chroma): double blocks (``full_attn``, ``full_ff`` =
``img_mlp``, ``full_ff_context`` = ``txt_mlp``) and single blocks (``single_attn``, ``single_proj_mlp``,
``single_proj_out`` = ``linear2``).

ECAD's units need the block internals (attention is inline), so the official ``patches_replace["dit"]`` double
and single block hooks run the block: the original block whenever the attention unit computes (its outputs are
captured through object-patched ``proj`` / ``linear1`` / ``linear2`` forwards), and a re-statement of the block
only when a cached output is reused. The re-statement is checked against the original block at each block's first
call with each new call shape (argument names, shapes, dtypes, the patches present, the keyword arguments ComfyUI
hands the block outside ``args``, such as ``modulation_dims``). A difference (or a re-statement that cannot run:
another MLP, another kernel) logs one warning and switches the model to the module-level fallback for that call and
every later one: ComfyUI's own block always runs, a reused unit's output substituted at its module (``img_attn.proj``
/ ``txt_attn.proj``, ``linear1``'s MLP rows, ``linear2``'s input or output) and the MLPs through the engine: the same
ECAD semantics, less compute saved (a reused attention's q/k/v and attention still run).
"""

from __future__ import annotations

import logging
import sys

import torch

from ...ecad_core.costs import Arch
from ...ecad_core.engine import signature
from ...ecad_core.errors import SelfCheckError
from ...ecad_core.hooks import restatement_mismatch
from .base import BlockPoint, ComfyAdapter, HookPath, Restatement, Unit, comfy_version, mark, unit_forward

log = logging.getLogger("ecad")

DOUBLE = (("full_attn", None), ("full_ff", "img_mlp"), ("full_ff_context", "txt_mlp"))
SINGLE = (("single_attn", None), ("single_proj_mlp", None), ("single_proj_out", "linear2"))


class FluxComfy(ComfyAdapter):
    family = "flux"
    supports = "FLUX.1"
    order = 20
    classes = ("comfy.ldm.flux.model.Flux",)
    excludes = ("comfy.ldm.chroma.model.Chroma",)  # FLUX's blocks, other modulation: its own adapter (chroma.py)

    @classmethod
    def matches(cls, diffusion_model):
        return (
            super().matches(diffusion_model)
            and hasattr(diffusion_model, "double_blocks")
            and hasattr(diffusion_model, "single_blocks")
            # FLUX.2 loads as this class too (shared modulations, gated MLPs): its own adapter (flux2.py)
            and not getattr(getattr(diffusion_model, "params", None), "global_modulation", False)
        )

    def counts(self):
        return len(self.dm.double_blocks), len(self.dm.single_blocks)

    @property
    def arch_hint(self):
        return "flux-dev" if getattr(getattr(self.dm, "params", None), "guidance_embed", False) else "flux-schnell"

    kind_label = "FLUX"  # the model in ``kind``, which the FLUX-class adapters below share
    kind_names_variant = True  # ``kind`` names ``arch_hint``

    @property
    def kind(self):
        nd, ns = self.counts()
        hint = f"{self.arch_hint}, " if self.kind_names_variant else ""
        return f"ComfyUI {self.kind_label} ({hint}{nd} double + {ns} single blocks)"

    def units(self):
        nd, ns = self.counts()
        return [
            Unit(f"double_blocks.{i}", comp, sub and f"double_blocks.{i}.{sub}")
            for i in range(nd)
            for comp, sub in DOUBLE
        ] + [
            Unit(f"single_blocks.{j}", comp, sub and f"single_blocks.{j}.{sub}")
            for j in range(ns)
            for comp, sub in SINGLE
        ]

    def block_points(self):
        nd, ns = self.counts()
        return [BlockPoint("double_block", i, 3 * i, 3) for i in range(nd)] + [
            BlockPoint("single_block", j, 3 * (nd + j), 3) for j in range(ns)
        ]

    def arch(self, name):
        dm = self.dm
        p = dm.params
        if int(p.patch_size) != 2:
            return None
        return self.custom_arch(
            name,
            latent_channels=int(p.in_channels),
            out_channels=int(p.out_channels),
            pooled_dim=self.pooled_dim(),
            guidance_embeds=bool(getattr(p, "guidance_embed", False)),
        )

    def custom_arch(self, name, **numbers):
        """This family's ``Arch`` of the model: the FLUX-class blocks' numbers read here, the rest ``numbers``."""
        dm = self.dm
        block_numbers = dict(
            hidden=int(dm.hidden_size),
            heads=int(dm.num_heads),
            depth=len(dm.double_blocks),
            single_depth=len(dm.single_blocks),
            mlp_ratio=float(dm.params.mlp_ratio),
        )
        if "caption_channels" not in numbers:
            numbers["caption_channels"] = int(dm.txt_in.weight.shape[1])
        return Arch.custom(self.family, name=name, **block_numbers, **numbers)

    def pooled_dim(self) -> int:
        """The pooled text embedding's width (``vector_in``), 0 without one."""
        vec = getattr(self.dm, "vector_in", None)
        return int(vec.in_layer.weight.shape[1]) if vec is not None else 0

    def install(self, mp, run):
        dm = self.dm
        why = _unfit(dm)
        if why:  # the module-level pieces are missing too: block-level reuse through ComfyUI's dit block hooks
            run.hook_path = self.install_fallback(mp, run, "FLUX", why)
            return
        path = run.hook_path = HookPath("FLUX", "module caching")
        double, single = FluxDoubleRestatement(dm, run, path), FluxSingleRestatement(dm, run, path)
        missing = _missing_internals(dm)
        if missing:
            path.switch_off(missing)
        run.capture = run.substitute = None
        for i, blk in enumerate(dm.double_blocks):
            for attr in ("img_attn.proj", "txt_attn.proj"):
                mp.add_object_patch(
                    f"diffusion_model.double_blocks.{i}.{attr}.forward",
                    _capture_forward(blk.get_submodule(attr), run, attr.replace("_attn.", "_")),
                )
            mp.add_object_patch(
                f"diffusion_model.double_blocks.{i}.img_mlp.forward", unit_forward(blk.img_mlp, run, 3 * i + 1)
            )
            mp.add_object_patch(
                f"diffusion_model.double_blocks.{i}.txt_mlp.forward", unit_forward(blk.txt_mlp, run, 3 * i + 2)
            )
            mp.set_model_patch_replace(double.patch_for(i), "dit", "double_block", i)
        for j, blk in enumerate(dm.single_blocks):
            for attr in ("linear1", "linear2"):
                mp.add_object_patch(
                    f"diffusion_model.single_blocks.{j}.{attr}.forward", _capture_forward(getattr(blk, attr), run, attr)
                )
            mp.set_model_patch_replace(single.patch_for(j), "dit", "single_block", j)


def _unfit(dm) -> str | None:
    """Why the FLUX blocks lack the modules both the re-statement and the module-level path need."""
    for name, attrs in (
        ("double_blocks", ("img_attn.proj", "txt_attn.proj", "img_mlp", "txt_mlp")),
        ("single_blocks", ("linear1", "linear2")),
    ):
        for i, blk in enumerate(getattr(dm, name)):
            for a in attrs:
                try:
                    blk.get_submodule(a)
                except AttributeError:
                    return f"{name}.{i} has no '{a}' module"
            if name == "single_blocks" and not isinstance(getattr(blk, "hidden_size", None), int):
                return f"{name}.{i} has no hidden_size"
    return None


def _missing_internals(dm) -> str | None:
    """Why the re-statement cannot run on this ComfyUI (None: the helpers it calls are there)."""
    blocks = [*dm.double_blocks[:1], *dm.single_blocks[:1]]
    for blk in blocks:
        mod = sys.modules.get(type(blk).__module__)
        for name in ("apply_mod", "attention"):
            if not callable(getattr(mod, name, None)):
                return f"ComfyUI's {type(blk).__module__} has no {name}()"
    return None


def _internal(blk, name: str):
    """ComfyUI's helper as the block's own module calls it (looked up per call, so it follows upstream)."""
    return getattr(sys.modules[type(blk).__module__], name)


def _capture_forward(module, run, key):
    """``module``'s forward, its (arguments, output) captured while a FLUX block runs as ComfyUI's own, or a reused
    unit's output substituted (``run.substitute[key](compute, args, kwargs)``: the module-level fallback)."""
    compute = type(module).forward.__get__(module)

    def forward(*args, **kwargs):
        sub = run.substitute.get(key) if run.substitute else None
        if sub is not None:
            out = sub(compute, args, kwargs)
            args = run.substituted_args or args
            run.substituted_args = None
        else:
            out = compute(*args, **kwargs)
        cap = run.capture
        if cap is not None:
            cap[key] = (args, out)
        return out

    return mark(forward)


def _put(t: torch.Tensor, start: int, part: torch.Tensor) -> torch.Tensor:
    """``t`` with features ``start:`` (as many as ``part`` has) replaced by ``part``, in place."""
    t[..., start : start + part.shape[-1]] = part
    return t


class _FluxRestatement(Restatement):
    """What both FLUX block re-statements share: the original block run with its outputs captured, and the
    module-level fallback (ComfyUI's block with a reused unit's output substituted at its module)."""

    def __init__(self, dm, run, path):
        super().__init__(dm, run, path)
        self.nd = len(dm.double_blocks)

    def _patch(self, blk, body, fallback):
        # a dit block patch: ComfyUI's block while the engine is off, every block checked at each new call shape
        return self.guarded(
            blk,
            lambda args, extra: extra["original_block"](args),
            lambda args, extra: body(self.run.engine, args, extra),
            lambda args, extra: self.check(blk, args, extra),
            lambda args, extra: fallback(self.run.engine, args, extra),
        )

    def captured(self, original, args, substitute=None):
        run = self.run
        run.capture, run.substitute, run.substituted_args = {}, substitute, None
        try:
            out = original(args)
            cap = run.capture
        finally:
            run.capture = run.substitute = None
        return out, cap

    def uncached(self, blk, why: str) -> None:
        """The blocks no longer call the modules the fallback substitutes at: the model runs uncached."""
        eng = self.run.engine
        if eng.enabled:
            eng.enabled = False
            log.warning("ECAD: FLUX on ComfyUI %s: no cache (%s %s)", comfy_version(), self.where(blk), why)

    def check(self, blk, args, extra) -> None:
        raise NotImplementedError


class FluxDoubleRestatement(_FluxRestatement):
    """Double block i: units 3i (attention, captured from ``img_attn.proj`` / ``txt_attn.proj``), 3i+1
    (``img_mlp``), 3i+2 (``txt_mlp``)."""

    def patch_for(self, i):
        blk = self.dm.double_blocks[i]
        u_attn = 3 * i
        run = self.run

        def compute(eng, sig, args, extra):
            if not eng.keeps(u_attn):  # nothing to keep: ComfyUI's block as it is, nothing captured
                out = extra["original_block"](args)
                eng.store(u_attn, sig, None)
                return out
            out, cap = self.captured(extra["original_block"], args)
            if "img_proj" not in cap or "txt_proj" not in cap:
                self.uncached(blk, "did not call img_attn.proj / txt_attn.proj")
                return out
            eng.store(u_attn, sig, (cap["img_proj"][1], cap["txt_proj"][1]))
            return out

        def body(eng, args, extra):
            sig = signature(args["img"], args["txt"])
            cached = eng.fetch(u_attn, sig) if eng.wants_reuse(u_attn) else None
            if cached is None:
                return compute(eng, sig, args, extra)
            return self.restated(blk, args, cached, mlp)

        def fallback(eng, args, extra):
            sig = signature(args["img"], args["txt"])
            cached = eng.fetch(u_attn, sig) if eng.wants_reuse(u_attn) else None
            if cached is None:
                return compute(eng, sig, args, extra)
            img_a, txt_a = cached
            # ComfyUI's block, the reused attention served at img_attn.proj / txt_attn.proj (its q/k/v and
            # attention still run), the MLPs through the engine at their modules
            sub = {"img_proj": lambda f, a, k: img_a, "txt_proj": lambda f, a, k: txt_a}
            out, cap = self.captured(extra["original_block"], args, sub)
            if "img_proj" not in cap or "txt_proj" not in cap:
                self.uncached(blk, "did not call img_attn.proj / txt_attn.proj")
            return out

        def mlp(k, module, make_input, like):
            # a reused MLP unit's norm + modulation is not built (the module's own forward: its object patch
            # would route it through the engine a second time)
            fwd = type(module).forward
            return run.engine.call_lazy(u_attn + k, lambda: fwd(module, make_input()), (like,))

        return self._patch(blk, body, fallback)

    @staticmethod
    def restated(blk, args, cached, mlp=None):
        """The double block with its attention outputs ``cached``. ``mlp(k, module, make_input, like)`` runs
        MLP unit k (1: img, 2: txt) and builds its input only if the unit computes; default: always built."""
        apply_mod = _internal(blk, "apply_mod")
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

    def check(self, blk, args, extra):
        with self.run.engine.paused():  # the check must not touch the cache or the statistics
            a1 = {**args, "img": args["img"].clone(), "txt": args["txt"].clone()}
            ref, cap = self.captured(extra["original_block"], a1)
            if "img_proj" not in cap or "txt_proj" not in cap:
                raise SelfCheckError(f"{self.where(blk)} did not call img_attn.proj / txt_attn.proj")
            a2 = {**args, "img": args["img"].clone(), "txt": args["txt"].clone()}
            mine = self.restated(blk, a2, (cap["img_proj"][1], cap["txt_proj"][1]))
        for k in ("img", "txt"):
            why = restatement_mismatch(ref[k], mine[k])
            if why:
                raise SelfCheckError(f"{self.where(blk)} differs from ComfyUI's block ({k}: {why})")


class FluxSingleRestatement(_FluxRestatement):
    """Single block j: units 3(nd+j) (attention), +1 (the MLP input, ``linear1``'s last rows), +2 (``linear2``)."""

    def patch_for(self, j):
        blk = self.dm.single_blocks[j]
        base = 3 * self.nd + 3 * j
        units = (base, base + 1, base + 2)

        def store(eng, sig, u):
            return lambda v: eng.store(u, sig, compact(v) if eng.keeps(u) else v)

        def cached(eng, sig):
            return [(eng.fetch(u, sig) if eng.wants_reuse(u) else None) for u in units]

        def compute(eng, sig, args, extra):
            if not any(eng.keeps(u) for u in units):  # nothing to keep: ComfyUI's block, nothing captured
                out = extra["original_block"](args)
                for u in units:
                    eng.store(u, sig, None)
                return out
            out, cap = self.captured(extra["original_block"], args)
            if "linear1" not in cap or "linear2" not in cap:
                self.uncached(blk, "did not call linear1 / linear2")
                return out
            for u, part in zip(units, self.parts(blk, cap)):
                store(eng, sig, u)(part)
            return out

        def body(eng, args, extra):
            sig = signature(args["img"])
            vals = cached(eng, sig)
            if all(v is None for v in vals):
                return compute(eng, sig, args, extra)
            return self.restated(blk, args, *vals, *(store(eng, sig, u) for u in units))

        def fallback(eng, args, extra):
            sig = signature(args["img"])
            attn, mlp, proj = vals = cached(eng, sig)
            if all(v is None for v in vals):
                return compute(eng, sig, args, extra)
            # ComfyUI's block with the reused parts substituted at linear1's output / linear2's input or output
            h = blk.hidden_size
            sub = {}
            if mlp is not None:
                sub["linear1"] = lambda f, a, k: _put(f(*a, **k), 3 * h, mlp)
            if proj is not None:
                sub["linear2"] = lambda f, a, k: proj
            elif attn is not None:

                def linear2(f, a, k):
                    a = (_put(a[0], 0, attn), *a[1:])
                    self.run.substituted_args = a
                    return f(*a, **k)

                sub["linear2"] = linear2
            out, cap = self.captured(extra["original_block"], args, sub)
            if "linear1" not in cap or "linear2" not in cap:
                self.uncached(blk, "did not call linear1 / linear2")
                return out
            for u, v, part in zip(units, vals, self.parts(blk, cap)):
                if v is None:
                    store(eng, sig, u)(part)
            return out

        return self._patch(blk, body, fallback)

    @staticmethod
    def parts(blk, cap):
        """(attention, MLP input, proj_out) of a single block from what its original run captured."""
        if "linear1" not in cap or "linear2" not in cap:
            raise SelfCheckError(f"the FLUX single block did not call linear1 / linear2 (ComfyUI {comfy_version()})")
        h = blk.hidden_size
        l2_in = cap["linear2"][0][0]
        return l2_in[..., :h], cap["linear1"][1][..., 3 * h :], cap["linear2"][1]

    @staticmethod
    def restated(blk, args, attn, mlp, proj, store_attn, store_mlp, store_proj):
        """The single block with any of its three units served from the cache (None = compute)."""
        apply_mod, attention = _internal(blk, "apply_mod"), _internal(blk, "attention")
        x, vec = args["img"], args["vec"]
        mod = blk.modulation(vec)[0] if blk.modulation else vec
        if attn is None or mlp is None:
            # linear1 fuses q/k/v and the MLP input: when only one of them is needed, only its rows run
            x_mod = apply_mod(blk.pre_norm(x), (1 + mod.scale), mod.shift, None)
            h3 = 3 * blk.hidden_size
            if attn is None and mlp is None:
                qkv, mlp_new = torch.split(blk.linear1(x_mod), [h3, blk.mlp_hidden_dim_first], dim=-1)
            elif attn is None:
                qkv = linear_rows(blk.linear1, x_mod, 0, h3)
            else:
                mlp_new = linear_rows(blk.linear1, x_mod, h3, h3 + blk.mlp_hidden_dim_first)
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

    def check(self, blk, args, extra):
        noop = lambda v: None
        with self.run.engine.paused():
            ref, cap = self.captured(extra["original_block"], {**args, "img": args["img"].clone()})
            if "linear1" not in cap or "linear2" not in cap:
                raise SelfCheckError(f"{self.where(blk)} did not call linear1 / linear2")
            mine = self.restated(blk, {**args, "img": args["img"].clone()}, None, None, None, noop, noop, noop)
        why = restatement_mismatch(ref["img"], mine["img"])
        if why:
            raise SelfCheckError(f"{self.where(blk)} differs from ComfyUI's block ({why})")


def compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a copy when it is a view into a larger tensor: a kept part of FLUX's fused linear1
    output (or linear2 input) would otherwise hold the whole fused tensor alive, twice the cache memory."""
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.contiguous() if not t.is_contiguous() else t.clone()
    return t


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # not a quantised tensor subclass


def linear_rows(lin, x, start: int, stop: int):
    """Output features start:stop of a ComfyUI linear layer, computing only those rows of its weight.

    A plain resident layer slices its weight directly. A layer ComfyUI casts on every call (``comfy_cast_weights``:
    manual cast, offloaded weights, dynamic VRAM, the default of newer releases) or patches on the fly (LoRA weight
    functions) gets its weight through ComfyUI's own ``cast_bias_weight`` (cast, weight functions, dequantised),
    which is then sliced: the cast is paid whole, the matmul only for the rows. Anything else (a layer class that
    is not ComfyUI's cast linear, a weight that stays quantised) runs whole through its own forward and is sliced.
    """
    w, b = lin.weight, lin.bias
    casts = getattr(lin, "comfy_cast_weights", False) or getattr(lin, "weight_function", None)
    casts = casts or getattr(lin, "bias_function", None)
    if not casts:
        if type(w) is torch.nn.Parameter and w.dtype == x.dtype and w.device == x.device:
            return torch.nn.functional.linear(x, w[start:stop], None if b is None else b[start:stop])
        return lin(x)[..., start:stop]
    ops = sys.modules.get("comfy.ops")
    cast = getattr(ops, "cast_bias_weight", None)
    uncast = getattr(ops, "uncast_bias_weight", None)
    if cast is None or uncast is None or not hasattr(type(lin), "forward_comfy_cast_weights"):
        return lin(x)[..., start:stop]
    w, b, stream = cast(lin, x, offloadable=True)
    try:
        if type(w) not in _PLAIN or (b is not None and type(b) not in _PLAIN):
            return lin(x)[..., start:stop]  # still quantised (another layout): ComfyUI's own forward
        return torch.nn.functional.linear(x, w[start:stop], None if b is None else b[start:stop])
    finally:
        uncast(lin, w, b, stream)
