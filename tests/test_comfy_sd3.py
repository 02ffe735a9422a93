"""SD3 / SD3.5 (MMDiT) on ComfyUI: the family record, the adapter's block re-statement on ComfyUI's own MMDiT
(in-process, small random widths: analytic MACs against hook-counted MACs, all-recompute exact, reuse counts, the
fallback when a block no longer matches), and end to end on a real server with the tiny stock-detected checkpoint
(make_tiny ``ecad_tiny_sd3``)."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

from comfy_harness import inprocess
from comfy_harness.family_prompts import apply_schedule, last_stats, run_latent, schedule_dir

STEPS = 3
DEPTH = 3  # two joint blocks + the last (pre-only) one
CTX, POOLED = 40, 24


@pytest.fixture(scope="module")
def pack(comfy_dir):
    return inprocess.pack_modules("sd3")


@pytest.fixture(autouse=True)
def torch_attention(request, monkeypatch):
    # ComfyUI's CPU attention (sub-quadratic / split) chunks by the free memory at each call, so two runs of the
    # same block may round differently: the in-process tests pin PyTorch's attention (mmdit looks it up per call)
    if "pack" not in request.fixturenames:
        return
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    monkeypatch.setattr(mmdit, "optimized_attention", attention.attention_pytorch)


def _model(seed=0, dual=False):
    """ComfyUI's MMDiT (width 64 x depth), random weights; ``dual``: SD3.5 Medium's extra self-attention in block 0."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.ops

    dm = mmdit.OpenAISignatureMMDITWrapper(
        input_size=None,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        depth=DEPTH,
        adm_in_channels=POOLED,
        pos_embed_max_size=16,
        num_patches=256,
        x_block_self_attn_layers=[0] if dual else [],
        qk_norm="rms" if dual else None,
        context_embedder_config={
            "target": "torch.nn.Linear",
            "params": {"in_features": CTX, "out_features": 64 * DEPTH},
        },
        operations=comfy.ops.disable_weight_init,
    )
    dm = inprocess.randomize(dm, seed, 0.1)
    # ComfyUI allocates pos_embed with torch.empty (a checkpoint fills it): left alone, it is whatever the memory
    # held, at times NaN, and the outputs compared here are then NaN too
    with torch.no_grad():
        dm.pos_embed.copy_(torch.randn(dm.pos_embed.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)
    return dm


def _inputs(batch=2, h=64, w=96, tt=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 16, h // 8, w // 8, generator=g),
        torch.randn(batch, tt, CTX, generator=g),
        torch.randn(batch, POOLED, generator=g),
    )


def test_record_detect_and_layout():
    from ecad_core import costs, families, make_layout
    from ecad_core.schedule.model_files import layout_of_keys

    fam = families.get("sd3")
    lay = make_layout("sd3", 23, 1)
    assert lay.n_units == 23 * 3 + 2 and lay.units()[-2:] == [("last_0", "attn"), ("last_0", "ff")]
    assert costs.ARCHS["sd3-medium"].layout() == lay
    keys = [f"joint_blocks.{i}.context_block.attn.qkv.weight" for i in range(24)] + ["x_embedder.proj.weight"]
    assert fam.detect(keys, set(keys)) == ((23, 1), "sd3")
    assert layout_of_keys(["model.diffusion_model." + k for k in keys]) == (lay, "sd3")
    with pytest.raises(ValueError, match="exactly one last"):
        costs.Arch.custom("sd3", depth=3, single_depth=0)


def test_heuristic_seeds_use_the_roles():
    from ecad_core import make_layout
    from ecad_core.search.problem import GenomeSpace
    from ecad_core.search.sampling import heuristic_seeds

    seeds = {s.name: s for s in heuristic_seeds(GenomeSpace(make_layout("sd3", 4, 1), 10))}
    units = make_layout("sd3", 4, 1).units()
    attn = [i for i, u in enumerate(units) if u[1] == "attn"]
    txt = [i for i, u in enumerate(units) if u[1] == "ff_context"]
    # the joint attention of both groups is cached together; the text MLP is the TGATE-like seeds' gated stream
    together = seeds["cache-attention-every-2"].effective_bits()
    assert not together[1, attn].any() and together[1, [i for i in range(len(units)) if i not in attn]].all()
    tg = next(s for n, s in seeds.items() if n.startswith("tgate")).effective_bits()
    assert not tg[-1, txt].any() and tg[:, [i for i, u in enumerate(units) if u[1] == "ff"]].all()


def _count_macs(dm, run):
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    n = len(dm.joint_blocks)

    def block(i):
        return str(i) if i < n - 1 else "last_0"

    def unit_of(name):
        m = re.match(r"joint_blocks\.(\d+)\.(x_block|context_block)\.(mlp|attn2?)(\.|$)", name)
        if not m:
            return "fixed"
        i = int(m.group(1))
        if m.group(3) == "mlp":
            return block(i), "ff" if m.group(2) == "x_block" else "ff_context"
        return block(i), "attn"

    def attention_macs(q, k):
        return 2 * q.shape[0] * q.shape[1] * k.shape[1] * q.shape[2]

    return inprocess.count_macs(dm, run, unit_of, dm.joint_blocks, mmdit, "optimized_attention", attention_macs, block)


def test_macs_formula_matches_hooked_comfy_modules(pack):
    costs = pack["costs"]
    dm = _model()
    ad = pack["adapters"].sd3.SD3Comfy(dm)
    arch = ad.arch("sd3-tiny")
    assert (arch.hidden, arch.heads, arch.depth, arch.single_depth, arch.token_in, arch.pooled_dim) == (
        192,
        3,
        DEPTH - 1,
        1,
        64,
        POOLED,
    )
    batch, h, w, tt = 2, 64, 96, 7
    x, ctx, y = _inputs(batch, h, w, tt)
    linear, attn = _count_macs(dm, lambda: dm(x, torch.tensor([0.5] * batch), context=ctx, y=y))
    units = ad.layout.units()
    ecad = costs.step_costs(arch, h, w, batch=batch, text_tokens=tt, mode="ecad")
    full = costs.step_costs(arch, h, w, batch=batch, text_tokens=tt, mode="full")
    inprocess.assert_macs_match(linear, attn, units, ecad, full)
    # SD3.5 Medium's dual attention is not in the cost model: the search costs units uniformly
    assert pack["adapters"].sd3.SD3Comfy(_model(dual=True)).arch("x") is None


def _patched_steps(pack, dm, sched, xs, ctx, y):
    return inprocess.patched_steps(pack, dm, sched, xs, lambda x, t: dm(x, t, context=ctx, y=y))


@pytest.mark.parametrize("dual", [False, True])
def test_all_recompute_exact_and_mixed_reuses_units(pack, dual):
    S = pack["schedule"]
    dm = _model(dual=dual)
    lay = pack["adapters"].sd3.SD3Comfy(dm).layout
    assert lay == S.make_layout("sd3", DEPTH - 1, 1)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(1, 16, 8, 12, generator=g) for _ in range(STEPS)]
    _, ctx, y = _inputs(1)
    with torch.no_grad():
        ref = [dm(x, torch.tensor([1.0 - i / STEPS]), context=ctx, y=y) for i, x in enumerate(xs)]
    full, st, run = _patched_steps(pack, dm, S.Schedule.full(lay, STEPS, name="full"), xs, ctx, y)
    assert all(torch.equal(a, b) for a, b in zip(full, ref)) and st.total_reused == 0
    assert run.hook_path.off is None, run.hook_path.describe()  # the re-statement matched ComfyUI's blocks
    bits = np.ones((STEPS, lay.n_units), bool)
    bits[1:, 0] = False  # block 0's joint attention reused at steps 1, 2
    bits[2, 5] = False  # block 1's text MLP reused at step 2
    bits[2, 7] = False  # the last block's image MLP reused at step 2
    mixed, st, _ = _patched_steps(pack, dm, S.Schedule(lay, bits, name="mixed"), xs, ctx, y)
    assert st.total_reused == 4 and st.total_computed == STEPS * lay.n_units - 4
    assert torch.equal(mixed[0], ref[0]) and not torch.equal(mixed[1], ref[1])
    rel = ((mixed[2] - ref[2]).norm() / ref[2].norm()).item()
    assert 1e-4 < rel < 1.0, rel


def test_a_block_that_changed_falls_back_to_comfyuis_blocks(pack, caplog, monkeypatch):
    # ComfyUI changes its block (here: another modulate): the check at the first call sees the difference, the
    # model runs ComfyUI's own blocks with the MLPs cached at their modules, with one warning
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    S = pack["schedule"]
    dm = _model()
    lay = pack["adapters"].sd3.SD3Comfy(dm).layout
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(1, 16, 8, 12, generator=g) for _ in range(STEPS)]
    _, ctx, y = _inputs(1)
    orig_post = mmdit.DismantledBlock.post_attention

    def changed_post(self, attn, x, gate_msa, shift_mlp, scale_mlp, gate_mlp):
        return orig_post(self, attn, x, gate_msa, shift_mlp, scale_mlp, gate_mlp) * 1.5

    monkeypatch.setattr(mmdit.DismantledBlock, "post_attention", changed_post)
    with torch.no_grad():
        ref = [dm(x, torch.tensor([1.0 - i / STEPS]), context=ctx, y=y) for i, x in enumerate(xs)]
    with caplog.at_level(logging.WARNING, logger="ecad"):
        full, st, run = _patched_steps(pack, dm, S.Schedule.full(lay, STEPS, name="full"), xs, ctx, y)
    assert all(torch.equal(a, b) for a, b in zip(full, ref))
    assert run.hook_path.off and "differs from ComfyUI's block" in run.hook_path.off
    assert sum("SD3" in r.message and "block re-statement off" in r.message for r in caplog.records) == 1
    bits = np.ones((STEPS, lay.n_units), bool)
    bits[1:, 1] = False  # block 0's image MLP: cached at its module
    bits[1:, 0] = False  # block 0's attention: recomputed on this path
    mixed, st, _ = _patched_steps(pack, dm, S.Schedule(lay, bits, name="mixed"), xs, ctx, y)
    assert st.total_reused == 2 and not torch.equal(mixed[2], ref[2])


def test_other_family_schedule_is_refused(pack):
    import comfy.model_patcher

    S = pack["schedule"]
    base = torch.nn.Module()
    base.diffusion_model = _model()
    mp = comfy.model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(Exception, match="qwen_image") as e:
        pack["patching"].patch_model(mp, S.Schedule.full(S.make_layout("qwen_image", 3), STEPS, name="q"))
    assert "SD3" in str(e.value)


# ----------------------------------------------------------------------------- end to end (real ComfyUI server)

SD3_TINY = "ecad_tiny_sd3"
E2E_STEPS = 4


def _sd3_prompt(seed, preset=None, prefix="sd3"):
    from test_comfy_harness import ksampler_prompt

    p = ksampler_prompt(SD3_TINY, prefix, seed)  # ComfyUI's stock SD3 detection, 128 x 128, cfg 2
    p["5"]["inputs"]["steps"] = E2E_STEPS
    for k in ("7", "8", "9"):
        p.pop(k)
    return apply_schedule(p, preset)


@pytest.fixture(scope="module")
def sd3_schedules(comfy_server):
    from ecad_core import Schedule, make_layout

    d = schedule_dir(comfy_server)
    lay = make_layout("sd3", 1, 1)  # make_tiny: depth 2
    Schedule.full(lay, E2E_STEPS, name="sd3-full", model="sd3-medium").save(d / "sd3-full.json")
    bits = np.ones((E2E_STEPS, lay.n_units), bool)
    bits[2:, 0] = False  # block 0's joint attention reused at steps 2, 3
    bits[1, 2] = False  # block 0's text MLP at step 1
    bits[3, 4] = False  # the last block's image MLP at step 3
    mixed = Schedule(lay, bits, name="sd3-mixed", model="sd3-medium")
    mixed.save(d / "sd3-mixed.json")
    return {"mixed_reused": int((~mixed.effective_bits()).sum())}


_seeds = iter(range(8000, 9000))


@pytest.mark.comfy
def test_server_all_recompute_exact_mixed_reuses_expected_units(comfy_server, sd3_schedules):
    srv = comfy_server

    def latent(p):
        return run_latent(srv, p)

    seed = next(_seeds)
    ref = latent(_sd3_prompt(seed, prefix="s_ref"))
    full = latent(_sd3_prompt(seed, "user/sd3-full", prefix="s_full"))
    st = last_stats(srv)
    assert st["reused"] == 0 and st["steps"] == E2E_STEPS and st["name"] == "sd3-full"
    assert torch.equal(full, ref), "all-recompute schedule changed the image"
    mixed = latent(_sd3_prompt(seed, "user/sd3-mixed", prefix="s_mixed"))
    st = last_stats(srv)
    per_step = st["calls"] // st["steps"]  # cond and uncond
    assert st["reused"] == sd3_schedules["mixed_reused"] * per_step, st
    assert st["total"] == 5 * E2E_STEPS * per_step
    rel = ((mixed.float() - ref.float()).norm() / ref.float().norm()).item()
    # the tiny random model's blocks add little to its output (weights N(0, 0.02)): a small but real change
    assert torch.isfinite(mixed).all() and 0 < rel < 0.5, rel
    log = srv.log_text()
    assert "ECAD: SD3" not in log or "block re-statement off" not in log  # the re-statement matched ComfyUI's


@pytest.mark.comfy
def test_server_refuses_another_familys_schedule(comfy_server, sd3_schedules):
    from comfy_harness.server import PromptExecutionError

    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(_sd3_prompt(next(_seeds), "flux-dev-256-fast", prefix="s_wrong"), timeout=120)
    msg = str(e.value)
    assert "flux-dev-256-fast" in msg and "SD3" in msg, msg[:2000]


# ----------------------------------------------------------------------------- diffusers


def test_diffusers_adapter_caches_the_same_units():
    from diffusers import SD3Transformer2DModel

    from ecad_core import Schedule, apply, costs, make_layout

    torch.manual_seed(0)
    kw = dict(
        sample_size=8,
        num_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=CTX,
        caption_projection_dim=32,
        pooled_projection_dim=POOLED,
        out_channels=16,
        pos_embed_max_size=16,
    )
    tr = SD3Transformer2DModel(**kw).eval()
    arch = costs.Arch.from_diffusers_config(tr.config, text_tokens=7)
    assert (arch.family, arch.depth, arch.single_depth, arch.hidden) == ("sd3", 2, 1, 32)
    lay = make_layout("sd3", 2, 1)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 16, 8, 12, generator=g) for _ in range(STEPS)]
    ctx, pooled = torch.randn(1, 7, CTX, generator=g), torch.randn(1, POOLED, generator=g)

    def sample():
        return [
            tr(
                hidden_states=x,
                encoder_hidden_states=ctx,
                pooled_projections=pooled,
                timestep=torch.tensor([1.0 - i / STEPS]),
                return_dict=False,
            )[0]
            for i, x in enumerate(xs)
        ]

    bits = np.ones((STEPS, lay.n_units), bool)
    bits[1:, 0] = False  # block 0's joint attention
    bits[2, 7] = False  # the last block's MLP
    ref, outs, stats = inprocess.diffusers_full_and_mixed(tr, lay, STEPS, bits, sample)
    assert torch.equal(outs[0], ref[0]) and not torch.equal(outs[2], ref[2])
    assert stats.total_reused == 3
    # SD3.5 Medium's dual attention is refused on diffusers, naming the block
    dual = SD3Transformer2DModel(**kw, dual_attention_layers=(0,), qk_norm="rms_norm").eval()
    with pytest.raises(Exception, match="transformer_blocks.0 has a dual attention"):
        with apply(dual, Schedule.full(lay, STEPS)):
            pass
