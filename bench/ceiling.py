"""The zero-overhead references the engine is measured against.

* **ceiling** (``PixArtCeiling``, ``FluxCeiling`` on diffusers; ``ComfyPixArtCeiling``, ``ComfyFluxCeiling``
  on ComfyUI): the block re-stated with the same unit structure as the engine's re-statement (a reused unit's
  input is not built: its norm and modulation run inside the unit, FLUX single blocks compute only the rows of
  ``linear1`` they need), and no bookkeeping at all: the schedule's bits and the keep bits (store an output only
  when the next step reuses it) precomputed as Python lists, outputs in a list, no signatures, statistics,
  checks or dict look-ups. Written from the host's own block code (diffusers' ``BasicTransformerBlock`` /
  ``FluxTransformerBlock`` / ``FluxSingleTransformerBlock``, ComfyUI's ``PixArtMSBlock``, ``DoubleStreamBlock``,
  ``SingleStreamBlock`` and their helpers), not from this project's re-statements. Whatever the engine costs
  beyond this is its overhead.
* **any module cache** (``CeilingCache``): the simplest module-output cache (each unit module's ``forward``
  returns its last output when the step's bit is 0): what any cache at unit-module outputs must still run
  (a reused unit's input). The engine's re-statements skip that, so it is not a bound any more, only a
  reference (the "ceiling" of the H100/H200 tables before issue #21).

* **ceiling in CUDA graphs** (``ceiling_for(..., static=True)`` run by ``CeilingGraphs``; diffusers PixArt and
  FLUX.1, ComfyUI PixArt: the families with a graph mode): the reference of the graph rows. The ceiling's
  outputs live in static buffers (as the engine's ``keep_store`` mode) and each distinct (schedule row, input
  signature) is one captured graph, replayed.

The bench sets ``step`` itself before each model call.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch.utils import _pytree as pytree

from ecad_core.engine.engine import _tree_copy_, _tree_map


class CeilingCache:
    """Any module cache: replays ``bits`` ([steps, units], 1 = compute) on ``modules`` (one per unit, layout order)."""

    def __init__(self, modules: list[torch.nn.Module], bits: np.ndarray):
        bits = np.asarray(bits, dtype=bool)
        if bits.ndim != 2 or bits.shape[1] != len(modules):
            raise ValueError(
                f"CeilingCache: bits must be [steps, {len(modules)}] for {len(modules)} modules, got shape {bits.shape}"
            )
        self.rows = [row.tolist() for row in bits]
        self.rows[0] = [True] * len(modules)  # step 0 always computes
        self.step = 0
        self.outputs: list = [None] * len(modules)
        self.modules = list(modules)
        for u, m in enumerate(self.modules):
            if "forward" in m.__dict__:
                raise RuntimeError(f"CeilingCache: module {u} ({type(m).__name__}) already has a patched forward")
            m.forward = self._unit_forward(u, m.forward)

    def _unit_forward(self, u: int, original):
        outputs, rows, this = self.outputs, self.rows, self

        def forward(*args, **kwargs):
            if not rows[this.step][u]:
                return outputs[u]
            out = outputs[u] = original(*args, **kwargs)
            return out

        return forward

    def reset(self) -> None:
        """Forget stored outputs (start of a new image)."""
        self.step = 0
        for i in range(len(self.outputs)):
            self.outputs[i] = None

    def remove(self) -> None:
        for m in self.modules:
            del m.forward
        self.modules = []
        self.outputs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


AnyModuleCache = CeilingCache  # the name the tables use


def ceiling_for(model, bits: np.ndarray, *, static: bool = False) -> _Replay:
    """The ceiling of a bench model: diffusers PixArt / FLUX.1 transformer, ComfyUI PixArtMS / Flux.
    ``static``: outputs in static buffers (``_Replay._put_static``), for ``CeilingGraphs``; not for ComfyUI's FLUX
    (the pack offers no graph mode there: its forward reads ``transformer_options``)."""
    if hasattr(model, "single_transformer_blocks"):
        return FluxCeiling(model, bits, static=static)
    if hasattr(model, "transformer_blocks"):
        return PixArtCeiling(model, bits, static=static)
    if hasattr(model, "double_blocks"):
        if static:
            raise ValueError("ceiling_for: no static buffers (CUDA graphs) for ComfyUI's FLUX (no graph mode there)")
        return ComfyFluxCeiling(model, bits)
    return ComfyPixArtCeiling(model, bits, static=static)


class _Replay:
    """Precomputed bits: ``rows[step][unit]`` (compute), ``keep[step][unit]`` (store: the next step reuses it)."""

    def __init__(self, bits: np.ndarray, n_units: int, what: str, static: bool = False):
        bits = np.array(bits, dtype=bool)
        if bits.ndim != 2 or bits.shape[1] != n_units:
            raise ValueError(f"{what}: bits must be [steps, {n_units}], got shape {bits.shape}")
        bits[0] = True  # step 0 always computes
        keep = np.zeros_like(bits)
        keep[:-1] = ~bits[1:]
        if static:
            # one graph per distinct row serves every step with that row, so a row keeps what any of its steps keeps
            for r in np.unique(bits, axis=0):
                same = (bits == r).all(axis=1)
                keep[same] = keep[same].any(axis=0)
        self.rows, self.keep = [r.tolist() for r in bits], [r.tolist() for r in keep]
        self.step = 0
        self.static = static
        self.out: list = [None] * n_units
        # put(unit, output or None): a list slot (None frees it), or in static mode a buffer written in place
        self.put = self._put_static if static else self.out.__setitem__
        self.patched: list[torch.nn.Module] = []
        self.patches: dict = {}

    def _put_static(self, u: int, a) -> None:
        """Static-buffer mode (``static=True``, for CUDA graphs as ``CacheEngine.keep_store``): a kept output is
        copied into its unit's buffer, allocated at the first store and never replaced, so a graph that reads
        it sees what the last graph that computed the unit wrote; an output not kept leaves the buffer alone.
        A first store inside a capture allocates from the graphs' pool: held until ``remove``, never reused."""
        if a is None:
            return
        b = self.out[u]
        if b is None:
            self.out[u] = _tree_map(lambda t: t.detach().clone(), a)
            return
        if _tree_shapes(b) != _tree_shapes(a):  # copy_ would broadcast a smaller batch silently
            raise ValueError(
                f"{type(self).__name__}: unit {u} output shape changed ({_tree_shapes(b)} -> "
                f"{_tree_shapes(a)}); static buffers serve one input signature"
            )
        _tree_copy_(b, a)

    def _set_forward(self, m: torch.nn.Module, fn) -> None:
        if "forward" in m.__dict__:
            raise RuntimeError(f"{type(self).__name__}: {type(m).__name__} already has a patched forward")
        m.forward = fn
        self.patched.append(m)

    def remove(self) -> None:
        for m in self.patched:
            del m.forward
        self.patched = []
        self.out[:] = [None] * len(self.out)  # the closures refer to this object: free the outputs now
        self.patches.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _tree_shapes(x):
    return tuple(t.shape for t in x) if isinstance(x, tuple) else x.shape


def _compact(t: torch.Tensor) -> torch.Tensor:
    """A stored part of a fused tensor as its own copy (a view would keep the whole fused tensor alive)."""
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.contiguous() if not t.is_contiguous() else t.clone()
    return t


class PixArtCeiling(_Replay):
    """diffusers PixArt: ``BasicTransformerBlock.forward`` (``ada_norm_single``) of each block re-stated."""

    def __init__(self, model, bits: np.ndarray, static: bool = False):
        blocks = list(model.transformer_blocks)
        super().__init__(bits, 3 * len(blocks), "PixArtCeiling", static)
        for i, blk in enumerate(blocks):
            self._set_forward(blk, self._block(blk, 3 * i))

    def _block(self, blk, u):
        rows, keep, out, put, this = self.rows, self.keep, self.out, self.put, self

        def forward(
            hidden_states,
            attention_mask=None,
            encoder_hidden_states=None,
            encoder_attention_mask=None,
            timestep=None,
            cross_attention_kwargs=None,
            class_labels=None,
            added_cond_kwargs=None,
        ):
            row, kp = rows[this.step], keep[this.step]
            kw = cross_attention_kwargs or {}
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
                blk.scale_shift_table[None] + timestep.reshape(hidden_states.shape[0], 6, -1)
            ).chunk(6, dim=1)
            if row[u]:
                n = blk.norm1(hidden_states)
                n = n * (1 + scale_msa) + shift_msa
                a = blk.attn1(n, encoder_hidden_states=None, attention_mask=attention_mask, **kw)
                put(u, a if kp[u] else None)
            else:
                a = out[u]
            hidden_states = gate_msa * a + hidden_states
            if row[u + 1]:
                a = blk.attn2(
                    hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=encoder_attention_mask,
                    **kw,
                )
                put(u + 1, a if kp[u + 1] else None)
            else:
                a = out[u + 1]
            hidden_states = a + hidden_states
            if row[u + 2]:
                n = blk.norm2(hidden_states)
                n = n * (1 + scale_mlp) + shift_mlp
                a = blk.ff(n)
                put(u + 2, a if kp[u + 2] else None)
            else:
                a = out[u + 2]
            return gate_mlp * a + hidden_states

        return forward


class FluxCeiling(_Replay):
    """diffusers FLUX.1: ``FluxTransformerBlock`` and ``FluxSingleTransformerBlock`` forwards re-stated."""

    def __init__(self, model, bits: np.ndarray, static: bool = False):
        double, single = list(model.transformer_blocks), list(model.single_transformer_blocks)
        super().__init__(bits, 3 * (len(double) + len(single)), "FluxCeiling", static)
        for i, blk in enumerate(double):
            self._set_forward(blk, self._double(blk, 3 * i))
        for j, blk in enumerate(single):
            self._set_forward(blk, self._single(blk, 3 * (len(double) + j)))

    def _double(self, blk, u):
        rows, keep, out, put, this = self.rows, self.keep, self.out, self.put, self
        n1, n1c = blk.norm1, blk.norm1_context

        def forward(hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
            row, kp = rows[this.step], keep[this.step]
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = n1.linear(n1.silu(temb)).chunk(6, dim=1)
            c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = n1c.linear(
                n1c.silu(temb)
            ).chunk(6, dim=1)
            if row[u]:
                nh = n1.norm(hidden_states) * (1 + scale_msa[:, None]) + shift_msa[:, None]
                nc = n1c.norm(encoder_hidden_states) * (1 + c_scale_msa[:, None]) + c_shift_msa[:, None]
                a = blk.attn(
                    hidden_states=nh,
                    encoder_hidden_states=nc,
                    image_rotary_emb=image_rotary_emb,
                    **(joint_attention_kwargs or {}),
                )
                put(u, a if kp[u] else None)
            else:
                a = out[u]
            attn_output, context_attn_output = a
            hidden_states = hidden_states + gate_msa.unsqueeze(1) * attn_output
            if row[u + 1]:
                n = blk.norm2(hidden_states)
                n = n * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
                f = blk.ff(n)
                put(u + 1, f if kp[u + 1] else None)
            else:
                f = out[u + 1]
            hidden_states = hidden_states + gate_mlp.unsqueeze(1) * f
            encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * context_attn_output
            if row[u + 2]:
                n = blk.norm2_context(encoder_hidden_states)
                n = n * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
                f = blk.ff_context(n)
                put(u + 2, f if kp[u + 2] else None)
            else:
                f = out[u + 2]
            encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * f
            if encoder_hidden_states.dtype == torch.float16:
                encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
            return encoder_hidden_states, hidden_states

        return forward

    def _single(self, blk, u):
        rows, keep, out, put, this = self.rows, self.keep, self.out, self.put, self
        n = blk.norm

        def forward(hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
            row, kp = rows[this.step], keep[this.step]
            text_seq_len = encoder_hidden_states.shape[1]
            hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
            shift_msa, scale_msa, gate = n.linear(n.silu(temb)).chunk(3, dim=1)
            normed = None
            if row[u + 1] or row[u]:
                normed = n.norm(hidden_states) * (1 + scale_msa[:, None]) + shift_msa[:, None]
            if row[u + 1]:
                mlp = blk.proj_mlp(normed)
                put(u + 1, mlp if kp[u + 1] else None)
            else:
                mlp = out[u + 1]
            if row[u]:
                a = blk.attn(hidden_states=normed, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {}))
                put(u, a if kp[u] else None)
            else:
                a = out[u]
            if row[u + 2]:
                proj = blk.proj_out(torch.cat([a, blk.act_mlp(mlp)], dim=2))
                put(u + 2, proj if kp[u + 2] else None)
            else:
                proj = out[u + 2]
            hidden_states = hidden_states + gate.unsqueeze(1) * proj
            if hidden_states.dtype == torch.float16:
                hidden_states = hidden_states.clip(-65504, 65504)
            return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]

        return forward


class ComfyPixArtCeiling(_Replay):
    """ComfyUI's PixArt (``PixArtMSBlock.forward``) re-stated per block, its residual stream contiguous (ComfyUI
    carries it in the transposed layout of its patch embedding; ``cross_attn`` still gets that layout, in which
    its ``q_linear`` rounds as in ComfyUI's block). ``static``: as the diffusers ceilings, for ``CeilingGraphs``."""

    def __init__(self, dm, bits: np.ndarray, static: bool = False):
        super().__init__(bits, 3 * len(dm.blocks), "ComfyPixArtCeiling", static)
        self.stride = None
        for i, blk in enumerate(dm.blocks):
            self._set_forward(blk, self._block(blk, 3 * i, i == 0))

    def _block(self, blk, u, first):
        rows, keep, out, put, this = self.rows, self.keep, self.out, self.put, self
        modulate = sys.modules[type(blk).__module__].t2i_modulate

        def forward(x, y, t, mask=None, HW=None, **kwargs):
            row, kp = rows[this.step], keep[this.step]
            if first:
                this.stride = x.stride()
            stride = this.stride
            x = x.contiguous()
            B = x.shape[0]
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
                blk.scale_shift_table[None].to(dtype=x.dtype, device=x.device) + t.reshape(B, 6, -1)
            ).chunk(6, dim=1)
            if row[u]:
                a = blk.attn(modulate(blk.norm1(x), shift_msa, scale_msa), HW=HW)
                put(u, a if kp[u] else None)
            else:
                a = out[u]
            x = x + (gate_msa * a)
            if row[u + 1]:
                xl = (
                    x
                    if x.stride() == stride
                    else torch.empty_strided(x.shape, stride, dtype=x.dtype, device=x.device).copy_(x)
                )
                a = blk.cross_attn(xl, y, mask)
                put(u + 1, a if kp[u + 1] else None)
            else:
                a = out[u + 1]
            x = x + a
            if row[u + 2]:
                a = blk.mlp(modulate(blk.norm2(x), shift_mlp, scale_mlp))
                put(u + 2, a if kp[u + 2] else None)
            else:
                a = out[u + 2]
            return x + (gate_mlp * a)

        return forward


class ComfyFluxCeiling(_Replay):
    """ComfyUI's FLUX.1 (``DoubleStreamBlock`` / ``SingleStreamBlock`` of ``comfy.ldm.flux.layers``, with its
    ``apply_mod`` and ``attention``) re-stated as ``patches_replace["dit"]`` block patches: a reused attention's
    q/k/v and attention are not computed, a reused MLP's input is not built, a single block computes only the rows
    of ``linear1`` it needs (the unit structure of the pack's FLUX adapter). ``patches`` goes to
    ``transformer_options["patches_replace"]["dit"]``."""

    def __init__(self, dm, bits: np.ndarray):
        nd, ns = len(dm.double_blocks), len(dm.single_blocks)
        super().__init__(bits, 3 * (nd + ns), "ComfyFluxCeiling")
        layers = sys.modules[type(dm.double_blocks[0]).__module__]
        self.apply_mod, self.attention = layers.apply_mod, layers.attention
        for i, blk in enumerate(dm.double_blocks):
            self.patches[("double_block", i)] = self._double(blk, 3 * i)
        for j, blk in enumerate(dm.single_blocks):
            self.patches[("single_block", j)] = self._single(blk, 3 * (nd + j))

    def _double(self, blk, u):
        rows, keep, out, this = self.rows, self.keep, self.out, self
        apply_mod, attention, heads = self.apply_mod, self.attention, blk.num_heads

        def qkv(x, norm, mod, attn):
            q = attn.qkv(apply_mod(norm(x), (1 + mod.scale), mod.shift, None))
            q, k, v = q.view(q.shape[0], q.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
            q, k = attn.norm(q, k, v)
            return q, k, v

        def patch(args, extra):
            row, kp = rows[this.step], keep[this.step]
            img, txt, vec = args["img"], args["txt"], args["vec"]
            if blk.modulation:
                img_mod1, img_mod2 = blk.img_mod(vec)
                txt_mod1, txt_mod2 = blk.txt_mod(vec)
            else:
                (img_mod1, img_mod2), (txt_mod1, txt_mod2) = vec
            if row[u]:
                iq, ik, iv = qkv(img, blk.img_norm1, img_mod1, blk.img_attn)
                tq, tk, tv = qkv(txt, blk.txt_norm1, txt_mod1, blk.txt_attn)
                opts = args.get("transformer_options") or {}
                if getattr(blk, "flipped_img_txt", False):  # ComfyUI 0.33 dropped the flag (always text first)
                    a = attention(
                        torch.cat((iq, tq), dim=2),
                        torch.cat((ik, tk), dim=2),
                        torch.cat((iv, tv), dim=2),
                        pe=args["pe"],
                        mask=args.get("attn_mask"),
                        transformer_options=opts,
                    )
                    img_a, txt_a = a[:, : img.shape[1]], a[:, img.shape[1] :]
                else:
                    a = attention(
                        torch.cat((tq, iq), dim=2),
                        torch.cat((tk, ik), dim=2),
                        torch.cat((tv, iv), dim=2),
                        pe=args["pe"],
                        mask=args.get("attn_mask"),
                        transformer_options=opts,
                    )
                    txt_a, img_a = a[:, : txt.shape[1]], a[:, txt.shape[1] :]
                img_a, txt_a = blk.img_attn.proj(img_a), blk.txt_attn.proj(txt_a)
                out[u] = (img_a, txt_a) if kp[u] else None
            else:
                img_a, txt_a = out[u]
            img += apply_mod(img_a, img_mod1.gate, None, None)
            if row[u + 1]:
                m = blk.img_mlp(apply_mod(blk.img_norm2(img), (1 + img_mod2.scale), img_mod2.shift, None))
                out[u + 1] = m if kp[u + 1] else None
            else:
                m = out[u + 1]
            img += apply_mod(m, img_mod2.gate, None, None)
            txt += apply_mod(txt_a, txt_mod1.gate, None, None)
            if row[u + 2]:
                m = blk.txt_mlp(apply_mod(blk.txt_norm2(txt), (1 + txt_mod2.scale), txt_mod2.shift, None))
                out[u + 2] = m if kp[u + 2] else None
            else:
                m = out[u + 2]
            txt += apply_mod(m, txt_mod2.gate, None, None)
            if txt.dtype == torch.float16:
                txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
            return {"img": img, "txt": txt}

        return patch

    def _single(self, blk, u):
        rows, keep, out, this = self.rows, self.keep, self.out, self
        apply_mod, attention = self.apply_mod, self.attention
        h3, hm = 3 * blk.hidden_size, blk.mlp_hidden_dim_first
        lin1 = blk.linear1
        F = torch.nn.functional

        def patch(args, extra):
            row, kp = rows[this.step], keep[this.step]
            x, vec = args["img"], args["vec"]
            mod = blk.modulation(vec)[0] if blk.modulation else vec
            a, m = (None if row[u] else out[u]), (None if row[u + 1] else out[u + 1])
            if row[u] or row[u + 1]:
                xm = apply_mod(blk.pre_norm(x), (1 + mod.scale), mod.shift, None)
                if row[u] and row[u + 1]:
                    qkv, m = torch.split(lin1(xm), [h3, hm], dim=-1)
                elif row[u]:  # only the rows of linear1 the computed unit needs
                    qkv = F.linear(xm, lin1.weight[:h3], None if lin1.bias is None else lin1.bias[:h3])
                else:
                    m = F.linear(xm, lin1.weight[h3 : h3 + hm], None if lin1.bias is None else lin1.bias[h3 : h3 + hm])
                if row[u]:
                    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, blk.num_heads, -1).permute(2, 0, 3, 1, 4)
                    q, k = blk.norm(q, k, v)
                    a = attention(
                        q,
                        k,
                        v,
                        pe=args["pe"],
                        mask=args.get("attn_mask"),
                        transformer_options=args.get("transformer_options") or {},
                    )
                    out[u] = _compact(a) if kp[u] else None
                if row[u + 1]:
                    out[u + 1] = _compact(m) if kp[u + 1] else None
            if row[u + 2]:
                p = blk.linear2(torch.cat((a, blk.mlp_act(m)), 2))
                out[u + 2] = p if kp[u + 2] else None
            else:
                p = out[u + 2]
            x += apply_mod(p, mod.gate, None, None)
            if x.dtype == torch.float16:
                x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
            return {"img": x}

        return patch


# -- the ceiling in CUDA graphs ---------------------------------------------------------------------------------


class CudaGraphCapture:
    """The capture primitive of ``CeilingGraphs`` on CUDA: ``warm(fn)`` runs ``fn`` eagerly on a side stream
    (lazy library set-up must not be captured), ``capture(fn) -> (graph, out)`` records it into a graph of the
    shared pool (``graph.replay()`` reruns its kernels, writing ``out``) — as ``GraphMode._eager_warm`` and
    ``GraphMode._capture``."""

    def __init__(self):
        self.pool = torch.cuda.graph_pool_handle()

    def warm(self, fn):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            out = fn()
        torch.cuda.current_stream().wait_stream(s)
        return out

    def capture(self, fn):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        return graph, out


class CeilingGraphs:
    """A static-buffer ceiling (``ceiling_for(..., static=True)``) in CUDA graphs, as the engine's graph mode
    runs the engine: one graph per distinct (schedule row, input signature), captured at the row's first call
    once the signature is warm and replayed afterwards, the inputs copied into the graph's static inputs and a
    copy of its static output returned; the first call at a new signature runs eagerly (warm-up). The benches'
    calls carry CFG as one batch, so there is no branch in the key. Every argument is a graph input (its tensor
    leaves copied in, anything else in the key): the bench's ComfyUI PixArt call ``dm(x, timesteps, context=,
    c_size=, c_ar=, transformer_options={})`` has only tensors and an empty dict, the same five tensors the
    pack's graph mode copies (its ``graph_kwargs``).

    Not ``ecad_core.engine.cuda_graphs.GraphMode`` itself: that reads a ``CacheEngine`` (step, branch, bits,
    the fresh-output set, its counters) and calls ``torch.cuda`` directly; this keeps only what the ceiling
    needs, with the capture primitive injectable (``capture``: ``CudaGraphCapture`` by default) so that the
    bookkeeping is tested on the CPU. It shares GraphMode's refusal reasons (``unsupported_reason``): where
    graphs cannot run, ``reason`` says why and the ceiling runs eagerly, still in static buffers."""

    def __init__(self, model: torch.nn.Module, ceiling: _Replay, *, capture=None, max_graphs: int = 64):
        from ecad_core.engine.cuda_graphs import unsupported_reason

        if not ceiling.static:
            raise ValueError("CeilingGraphs: the ceiling must keep its outputs in static buffers (static=True)")
        self.model, self.ceiling, self.max_graphs = model, ceiling, int(max_graphs)
        self.keys = [bytes(r) for r in ceiling.rows]
        self.graphs: dict = {}
        self.warm: set = set()
        self.captures = self.replays = self.eager_calls = 0
        self._original = None
        # an injected primitive stands in for the device (CPU tests)
        self.reason = None if capture is not None else unsupported_reason(model, _NoOffload)
        if self.reason is not None:
            print(f"  graph ceiling: CUDA graphs off: {self.reason}", flush=True)
            return
        self.prim = capture if capture is not None else CudaGraphCapture()
        self._original = model.forward
        model.forward = self.forward

    def forward(self, *args, **kwargs):
        from ecad_core.engine.cuda_graphs import _hashable

        leaves, spec = pytree.tree_flatten((args, kwargs))
        sig = (
            tuple((t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else _hashable(t) for t in leaves),
            str(spec),
        )
        key = (self.keys[self.ceiling.step], sig)
        g = self.graphs.get(key)
        if g is None:
            if sig not in self.warm:
                self.warm.add(sig)
                self.eager_calls += 1
                return self.prim.warm(lambda: self._original(*args, **kwargs))
            if len(self.graphs) >= self.max_graphs:
                raise RuntimeError(f"CeilingGraphs: more than {self.max_graphs} graphs (input signatures vary)")
            static = [t.clone() if isinstance(t, torch.Tensor) else None for t in leaves]
            sargs, skwargs = pytree.tree_unflatten([s if s is not None else t for s, t in zip(static, leaves)], spec)
            try:
                graph, out = self.prim.capture(lambda: self._original(*sargs, **skwargs))
            except Exception as e:  # noqa: BLE001 - as GraphMode: say why, run eagerly from here
                original = self._original
                self.remove()
                self.reason = f"capture failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); running eagerly"
                print(f"  graph ceiling: CUDA graphs off: {self.reason}", flush=True)
                self.eager_calls += 1
                return original(*args, **kwargs)
            g = self.graphs[key] = (graph, static, out)
            self.captures += 1  # capturing executes nothing: the replay below computes this call
        graph, static, out = g
        for s, t in zip(static, leaves):
            if s is not None and s.data_ptr() != t.data_ptr():
                s.copy_(t)
        graph.replay()
        self.replays += 1
        # the static output is overwritten by the next replay: the caller gets its own copy (as GraphMode)
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)

    def status(self) -> dict:
        return {
            "active": self.reason is None,
            "reason": self.reason,
            "graphs": len(self.graphs),
            "captures": self.captures,
            "replays": self.replays,
            "eager_calls": self.eager_calls,
        }

    def remove(self) -> None:
        if self._original is not None and self.model.__dict__.get("forward") == self.forward:
            del self.model.forward
        self._original = None
        self.graphs.clear()


class _NoOffload:  # what unsupported_reason reads of an engine: the ceiling never offloads
    offload_device = None
