"""Qwen-Image (and Edit) on ComfyUI: the family record, the adapter on ComfyUI's own QwenImageTransformer2DModel
(in-process, small random widths: analytic MACs against hook-counted MACs, all-recompute exact, reuse counts), and
end to end on a real server with the tiny stock-detected checkpoint (make_tiny ``ecad_tiny_qwen_image``)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from comfy_harness import inprocess
from comfy_harness.family_prompts import (
    apply_schedule,
    evaluate_node,
    evolve_node,
    last_stats,
    run_latent,
    sampler_prompt,
    schedule_dir,
    without_sampler,
)

STEPS = 3
DEPTH = 2


@pytest.fixture(scope="module")
def pack(comfy_dir):
    return inprocess.pack_modules("qwen_image")


def _model(seed=0):
    """ComfyUI's Qwen-Image transformer at a small width, random weights."""
    import comfy.ldm.qwen_image.model as qwen
    import comfy.ops

    dm = qwen.QwenImageTransformer2DModel(
        num_layers=DEPTH,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=40,
        axes_dims_rope=(4, 6, 6),
        operations=comfy.ops.disable_weight_init,
    )
    return inprocess.randomize(dm, seed, 0.2)


def _inputs(batch=2, h=64, w=96, tt=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 1, h // 8, w // 8, generator=g)
    ctx = torch.randn(batch, tt, 40, generator=g)
    return x, ctx


def test_record_detect_and_layout():
    from ecad_core import families, make_layout
    from ecad_core.schedule.model_files import layout_of_keys

    fam = families.get("qwen_image")
    assert families.family_of_model("qwen-image-edit") == "qwen_image"
    lay = make_layout("qwen_image", 60)
    assert lay.units()[:3] == [("0", "attn"), ("0", "img_mlp"), ("0", "txt_mlp")] and lay.n_units == 180
    keys = ["txt_norm.weight", "img_in.weight", "txt_in.weight"] + [
        f"transformer_blocks.{i}.{m}" for i in range(60) for m in ("attn.to_q.weight", "img_mlp.net.2.weight")
    ]
    assert fam.detect(keys, set(keys)) == ((60,), "qwen-image")
    assert layout_of_keys(["model.diffusion_model." + k for k in keys]) == (lay, "qwen-image")
    # FLUX's and the block-level family's keys are not Qwen-Image's
    assert fam.detect(["double_blocks.0.img_attn.qkv.weight"], {"double_blocks.0.img_attn.qkv.weight"}) is None


def test_heuristic_seeds_use_the_roles():
    from ecad_core import make_layout
    from ecad_core.search.problem import GenomeSpace
    from ecad_core.search.sampling import heuristic_seeds

    seeds = {s.name: s for s in heuristic_seeds(GenomeSpace(make_layout("qwen_image", 4), 10))}
    tg = [s for n, s in seeds.items() if n.startswith("tgate")]
    assert tg, sorted(seeds)
    bits = tg[0].effective_bits()
    lay = tg[0].layout
    txt = [i for i, u in enumerate(lay.units()) if u[1] == "txt_mlp"]
    img = [i for i, u in enumerate(lay.units()) if u[1] == "img_mlp"]
    assert not bits[-1, txt].any() and bits[:, img].all()  # the text stream is gated, the image MLP untouched


def _count_macs(dm, run):
    import comfy.ldm.qwen_image.model as qwen

    def unit_of(name):
        m = re.match(r"transformer_blocks\.(\d+)\.(attn|img_mlp|txt_mlp)(\.|$)", name)
        return (m.group(1), m.group(2)) if m else "fixed"

    def attention_macs(q, k):
        return 2 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]

    blocks = dm.transformer_blocks
    return inprocess.count_macs(dm, run, unit_of, blocks, qwen, "optimized_attention_masked", attention_macs)


@pytest.mark.parametrize("edit", [False, True])
def test_macs_formula_matches_hooked_comfy_modules(pack, edit):
    costs = pack["costs"]
    dm = _model()
    ad = pack["adapters"].qwen_image.QwenImageComfy(dm)
    arch = ad.arch("qwen-tiny")
    assert (arch.hidden, arch.heads, arch.depth, arch.token_in, arch.token_out, arch.caption_channels) == (
        32,
        2,
        DEPTH,
        64,
        64,
        40,
    )
    if edit:  # one reference image as large as the output, as Qwen-Image-Edit's variant counts it
        arch = dataclasses.replace(arch, extra={"ref_images": 1})
    batch, h, w, tt = 2, 64, 96, 7
    x, ctx = _inputs(batch, h, w, tt)

    def run():
        dm(x, torch.tensor([0.5] * batch), ctx, ref_latents=[x.clone()] if edit else None)

    linear, attn = _count_macs(dm, run)
    units = ad.layout.units()
    ecad = costs.step_costs(arch, h, w, batch=batch, text_tokens=tt, mode="ecad")
    full = costs.step_costs(arch, h, w, batch=batch, text_tokens=tt, mode="full")
    inprocess.assert_macs_match(linear, attn, units, ecad, full)


def _patched_steps(pack, dm, sched, xs, ctx, ref=None):
    outs, stats, _ = inprocess.patched_steps(pack, dm, sched, xs, lambda x, t: dm(x, t, ctx, ref_latents=ref))
    return outs, stats


@pytest.mark.parametrize("edit", [False, True])
def test_all_recompute_exact_and_mixed_reuses_units(pack, edit):
    S = pack["schedule"]
    dm = _model()
    lay = pack["adapters"].qwen_image.QwenImageComfy(dm).layout
    assert lay == S.make_layout("qwen_image", DEPTH)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(1, 16, 1, 8, 12, generator=g) for _ in range(STEPS)]
    _, ctx = _inputs(1)
    ref_lat = [torch.randn(1, 16, 1, 8, 12, generator=g)] if edit else None
    with torch.no_grad():
        ref = [dm(x, torch.tensor([1.0 - i / STEPS]), ctx, ref_latents=ref_lat) for i, x in enumerate(xs)]
    full, st = _patched_steps(pack, dm, S.Schedule.full(lay, STEPS, name="full"), xs, ctx, ref_lat)
    assert all(torch.equal(a, b) for a, b in zip(full, ref)) and st.total_reused == 0
    bits = np.ones((STEPS, lay.n_units), bool)
    bits[1:, 0] = False  # block 0's attention reused at steps 1, 2
    bits[2, 5] = False  # block 1's text MLP reused at step 2
    mixed, st = _patched_steps(pack, dm, S.Schedule(lay, bits, name="mixed"), xs, ctx, ref_lat)
    assert st.total_reused == 3 and st.total_computed == STEPS * lay.n_units - 3
    assert torch.equal(mixed[0], ref[0]) and not torch.equal(mixed[1], ref[1])
    rel = ((mixed[2] - ref[2]).norm() / ref[2].norm()).item()
    assert 1e-4 < rel < 1.0, rel
    assert not any(getattr(mod.forward, "ecad_patch", False) for mod in dm.modules())  # unpatched cleanly


def test_other_family_schedule_is_refused(pack):
    S = pack["schedule"]
    dm = _model()
    import comfy.model_patcher

    base = torch.nn.Module()
    base.diffusion_model = dm
    mp = comfy.model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(Exception, match="flux") as e:
        pack["patching"].patch_model(mp, S.Schedule.full(S.make_layout("flux", 1, 1), STEPS, name="f"))
    assert "Qwen-Image" in str(e.value)


# ----------------------------------------------------------------------------- end to end (real ComfyUI server)

QWEN = "ecad_tiny_qwen_image"
E2E_STEPS = 4


def _qwen_prompt(seed, preset=None, prefix="qwen", edit=False, **apply_inputs):
    """Tiny Qwen-Image (ComfyUI's own detection) -> KSampler (cfg 2: cond and uncond) -> SaveLatent; Edit: the
    reference latent through ComfyUI's ReferenceLatent node."""
    from comfy_harness import make_tiny

    p = sampler_prompt(
        QWEN,
        seed,
        dim=make_tiny.QWEN_CONTEXT_DIM,
        latent="EmptySD3LatentImage",
        latent_inputs={"width": 64, "height": 64, "batch_size": 1},
        steps=E2E_STEPS,
        prefix=prefix,
    )
    if edit:
        # a 5-D latent, as the Wan VAE encodes the reference image
        p["8"] = {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 64, "height": 64, "length": 1, "batch_size": 1},
        }
        p["7"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["2", 0], "latent": ["8", 0]}}
        p["5"]["inputs"]["positive"] = ["7", 0]
    return apply_schedule(p, preset, **apply_inputs)


@pytest.fixture(scope="module")
def qwen_schedules(comfy_server):
    from ecad_core import Schedule, make_layout

    d = schedule_dir(comfy_server)
    lay = make_layout("qwen_image", 1)  # make_tiny: one block
    Schedule.full(lay, E2E_STEPS, name="qwen-full", model="qwen-image").save(d / "qwen-full.json")
    bits = np.ones((E2E_STEPS, lay.n_units), bool)
    bits[2:, 0] = False  # attention reused at steps 2, 3
    bits[1, 2] = False  # text MLP reused at step 1
    mixed = Schedule(lay, bits, name="qwen-mixed", model="qwen-image")
    mixed.save(d / "qwen-mixed.json")
    return {"mixed_reused": int((~mixed.effective_bits()).sum())}


_seeds = iter(range(7000, 8000))


@pytest.mark.comfy
@pytest.mark.parametrize("edit", [False, True])
def test_server_all_recompute_exact_mixed_reuses_expected_units(comfy_server, qwen_schedules, edit):
    srv = comfy_server
    seed = next(_seeds)
    ref = run_latent(srv, _qwen_prompt(seed, prefix=f"q_ref{edit}", edit=edit))
    full = run_latent(srv, _qwen_prompt(seed, "user/qwen-full", prefix=f"q_full{edit}", edit=edit))
    st = last_stats(srv)
    assert st["reused"] == 0 and st["steps"] == E2E_STEPS and st["name"] == "qwen-full"
    assert torch.equal(full, ref), "all-recompute schedule changed the image"
    mixed = run_latent(srv, _qwen_prompt(seed, "user/qwen-mixed", prefix=f"q_mixed{edit}", edit=edit))
    st = last_stats(srv)
    per_step = st["calls"] // st["steps"]  # cond and uncond: each model call reuses the scheduled units
    assert st["reused"] == qwen_schedules["mixed_reused"] * per_step, st
    assert st["total"] == 3 * E2E_STEPS * per_step
    rel = ((mixed.float() - ref.float()).norm() / ref.float().norm()).item()
    assert torch.isfinite(mixed).all() and 1e-4 < rel < 0.5, rel
    assert "Qwen-Image" in srv.log_text()


@pytest.mark.comfy
def test_server_refuses_another_familys_schedule(comfy_server, qwen_schedules):
    from comfy_harness.server import PromptExecutionError

    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(_qwen_prompt(next(_seeds), "flux-dev-256-fast", prefix="q_wrong"), timeout=120)
    msg = str(e.value)
    assert "flux-dev-256-fast" in msg and "Qwen-Image" in msg, msg[:2000]


@pytest.mark.comfy
def test_server_evolve_and_evaluate(comfy_server, qwen_schedules):
    import json

    from test_comfy_evolve import _report, _search_dir

    srv = comfy_server
    p = without_sampler(_qwen_prompt(5, prefix="q_evolve"))
    p["30"] = evolve_node(3, "tiny-qwen", first_seed=7, population=3, resume=True, target_speedup=0.0)
    entry = srv.run(p, timeout=600)
    front = json.loads((_search_dir(srv, "tiny-qwen") / "front" / "front.json").read_text())
    assert front["cost"]["source"] == "macs" and front["cost"]["arch"] == "qwen-image", front["cost"]
    assert front["layout"].startswith("qwen_image") and "picked:" in _report(entry, "30")
    # Evaluate: the mixed schedule against no cache, same seeds, on the same model
    p = without_sampler(_qwen_prompt(6, prefix="q_eval"))
    p["10"] = evaluate_node("user/qwen-mixed", E2E_STEPS, "ecad_eval/qwen", metrics="psnr", negative=["3", 0])
    from test_comfy_eval import _report as eval_report

    _table, report, _ = eval_report(srv, srv.run(p, timeout=600))
    row = report["rows"][1]
    assert row["label"] == "qwen-mixed" and 0 < row["reuse_fraction"] < 1, row
    assert row["cost_model"] == "macs", row  # the analytic cost model of the loaded Qwen-Image


@pytest.mark.comfy
def test_header_probe_of_the_tiny_checkpoint(comfy_models):
    # the preset filter reads the safetensors header of the file ComfyUI loads
    from ecad_core import make_layout
    from ecad_core.schedule.model_files import layout_of_file

    assert layout_of_file(comfy_models[QWEN]) == (make_layout("qwen_image", 1), "qwen-image")


# ----------------------------------------------------------------------------- diffusers


def test_diffusers_adapter_caches_the_same_units():
    from diffusers import QwenImageTransformer2DModel

    from ecad_core import costs, make_layout

    torch.manual_seed(0)
    tr = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=40,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    arch = costs.Arch.from_diffusers_config(tr.config, text_tokens=7)
    assert (arch.family, arch.hidden, arch.depth, arch.token_in, arch.token_out) == ("qwen_image", 32, 2, 64, 64)
    lay = make_layout("qwen_image", 2)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 24, 64, generator=g) for _ in range(STEPS)]  # 4 x 6 packed latent tokens
    ctx = torch.randn(1, 7, 40, generator=g)

    def sample():
        return [
            tr(
                hidden_states=x,
                encoder_hidden_states=ctx,
                encoder_hidden_states_mask=torch.ones(1, 7),
                timestep=torch.tensor([1.0 - i / STEPS]),
                img_shapes=[[(1, 4, 6)]],
                return_dict=False,
            )[0]
            for i, x in enumerate(xs)
        ]

    bits = np.ones((STEPS, lay.n_units), bool)
    bits[1:, 0] = False
    bits[2, 5] = False
    ref, outs, stats = inprocess.diffusers_full_and_mixed(tr, lay, STEPS, bits, sample)
    assert torch.equal(outs[0], ref[0]) and not torch.equal(outs[2], ref[2])
    assert stats.total_reused == 3
