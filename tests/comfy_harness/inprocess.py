"""In-process adapter checks on ComfyUI's own transformer classes, shared by the per-family tests
(test_comfy_sd3.py, test_comfy_qwen_image.py): the pack's modules, random weights, hook-counted MACs, sampling
steps under a patched ModelPatcher, and the diffusers full/mixed run.

ComfyUI is imported only inside the functions (after ``bench_comfy.import_comfy``)."""

from __future__ import annotations

import importlib

import torch


def pack_modules(adapter: str) -> dict:
    """The pack's adapters, schedule, costs and patching modules (as bench_comfy imports it), with the adapter
    ``nodes.adapters.<adapter>`` loaded."""
    from bench import bench_comfy

    bench_comfy.import_comfy("cpu")
    adapters, _, schedule = bench_comfy.pack_modules()
    importlib.import_module(f"comfyui_ecad_bench.nodes.adapters.{adapter}")
    return {
        "adapters": adapters,
        "schedule": schedule,
        "costs": importlib.import_module("comfyui_ecad_bench.ecad_core.costs"),
        "patching": importlib.import_module("comfyui_ecad_bench.nodes.patching"),
    }


def sampling_modules():
    """ComfyUI imported for the CPU and the pack's ``nodes.sampling`` and ``ecad_core.schedule`` (as bench_comfy
    imports the pack): what the in-process Evolve sampler tests drive."""
    from bench import bench_comfy

    bench_comfy.import_comfy("cpu")
    bench_comfy.pack_modules()
    return (
        importlib.import_module("comfyui_ecad_bench.nodes.sampling"),
        importlib.import_module("comfyui_ecad_bench.ecad_core.schedule"),
    )


def randomize(dm, seed: int, scale: float):
    """Seeded random weights: matrices N(0, scale), vectors 1 + N(0, 0.05); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dm.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (scale if p.ndim > 1 else 0.05) + (p.ndim == 1))
    return dm.eval()


def count_macs(dm, run, unit_of, blocks, attention_owner, attention_name, attention_macs, block_name=str):
    """MACs of ``run()`` per unit by hooks: every Linear (and Conv2d) under the unit ``unit_of(module name)``
    gives (or "fixed"), and the attention products through ``attention_owner.<attention_name>`` (counted with
    ``attention_macs(q, k)``) under ``(block_name(i), "attn")`` of the block of ``blocks`` that runs."""
    linear: dict = {}
    attn: dict = {}
    hooks = []
    for name, mod in dm.named_modules():
        key = unit_of(name)
        if isinstance(mod, torch.nn.Linear):

            def hook(m, inp, out, key=key):
                linear[key] = linear.get(key, 0) + inp[0].numel() * m.out_features

            hooks.append(mod.register_forward_hook(hook))
        elif isinstance(mod, torch.nn.Conv2d):

            def hook(m, inp, out, key=key):
                k = m.kernel_size[0] * m.kernel_size[1]
                linear[key] = linear.get(key, 0) + out.numel() * m.in_channels // m.groups * k

            hooks.append(mod.register_forward_hook(hook))
    cur = [0]
    for i, blk in enumerate(blocks):
        hooks.append(blk.register_forward_pre_hook(lambda m, a, i=i: cur.__setitem__(0, i)))
    orig = getattr(attention_owner, attention_name)

    def counting(q, k, v, *a, **kw):
        key = (block_name(cur[0]), "attn")
        attn[key] = attn.get(key, 0) + attention_macs(q, k)
        return orig(q, k, v, *a, **kw)

    setattr(attention_owner, attention_name, counting)
    try:
        with torch.no_grad():
            run()
    finally:
        setattr(attention_owner, attention_name, orig)
        for h in hooks:
            h.remove()
    return linear, attn


def assert_macs_match(linear: dict, attn: dict, units, ecad, full) -> None:
    """The hook counts are the cost model's: per unit (without attention: ``ecad``, with: ``full``) and fixed."""
    assert set(linear) == set(units) | {"fixed"}
    assert [linear[u] for u in units] == ecad.unit.tolist()
    assert linear["fixed"] == ecad.fixed
    assert [linear[u] + attn.get(u, 0) for u in units] == full.unit.tolist()


def patched_steps(pack: dict, dm, sched, xs, forward):
    """``forward(x, t)`` for each step's input of ``xs`` (t from 1 down) with ``dm`` patched by ``sched`` in a CPU
    ModelPatcher, unpatched after. Returns the outputs, the run's statistics and the run."""
    import comfy.model_patcher

    base = torch.nn.Module()
    base.diffusion_model = dm
    mp = comfy.model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))
    m = pack["patching"].patch_model(mp, sched)
    run = m.model_options["transformer_options"]["ecad"]
    m.patch_model()
    try:
        run.engine.begin_run(len(xs))
        outs = []
        with torch.no_grad():
            for step, x in enumerate(xs):
                run.engine.set_position(step, ("cond",))
                outs.append(forward(x, torch.tensor([1.0 - step / len(xs)] * x.shape[0])))
        stats = run.engine.end_run()
    finally:
        m.unpatch_model()
    return outs, stats, run


def diffusers_full_and_mixed(tr, lay, steps: int, bits, sample):
    """diffusers ``tr``: ``sample()`` unpatched, under the all-recompute schedule (asserted the same) and under
    ``bits``. Returns the reference outputs, the mixed ones and the mixed run's statistics."""
    from ecad_core import Schedule, apply

    with torch.no_grad():
        ref = sample()
        with apply(tr, Schedule.full(lay, steps)):
            assert all(torch.equal(a, b) for a, b in zip(ref, sample()))
        with apply(tr, Schedule(lay, bits, name="mixed")) as h:
            outs = sample()
            stats = h.finish_run()
    return ref, outs, stats


def pixart_blocks_stop_calling_attn(monkeypatch, block_cls) -> None:
    """A future ComfyUI PixArt block (``block_cls``) that computes its attention without calling its ``attn`` module
    (and differs a little): the re-statement's check fails and module caching sees no attn call, so the pack runs
    the model uncached."""
    original = block_cls.forward

    def forward(self, x, y, t, mask=None, HW=None, **k):
        attn = self.attn
        self.__dict__["attn"] = lambda v, HW=None: type(attn).forward(attn, v, HW=HW) * 1.0001
        try:
            return original(self, x, y, t, mask, HW, **k)
        finally:
            del self.__dict__["attn"]

    monkeypatch.setattr(block_cls, "forward", forward)
