"""CUDA-graph mode on the ComfyUI path (PixArt-α/Σ), through an object patch of the model's forward.

The backend's ``GraphMode`` captures one graph per (schedule row, branch, input
shapes) and replays it. ComfyUI runs Python around every model call, so this is
offered only where it is safe:

* the model's forward must ignore everything but its tensor inputs (PixArt:
  ``x, timesteps, context, c_size, c_ar``; ``transformer_options`` and ``control``
  are not used), so freezing one call's Python in a graph changes nothing;
* checked at the first call of every sampling run: the whole model on the GPU
  (no low-VRAM partial loading), no ``comfy.ops`` weight casting (manual cast,
  fp8), no weight functions (LoRA applied on the fly); otherwise that run is
  eager and the log says why;
* graphs captured against weights that have since moved (ComfyUI re-loaded or
  re-patched the model) are captured again, never replayed.

FLUX and the block-level DiTs run eagerly: their forwards read
``transformer_options`` (block hooks, patches), and at the sizes they are used
they are GPU-bound, where graphs gain little.
"""

from __future__ import annotations

import logging

from ..ecad_core.engine.cuda_graphs import GraphMode

log = logging.getLogger("ecad")


def comfy_run_check(dm) -> str | None:
    """Why ComfyUI's current loading of ``dm`` cannot be captured (None if it can)."""
    for name, m in dm.named_modules():
        if getattr(m, "weight_function", None) or getattr(m, "bias_function", None):
            return (
                f"ComfyUI applies weight functions during the forward ({name}: e.g. LoRA on the fly); running eagerly"
            )
        if getattr(m, "comfy_cast_weights", False):
            return (
                f"ComfyUI casts this model's weights on every call ({name or 'model'}: manual cast, fp8 or "
                f"offloaded weights); running eagerly"
            )
    for name, p in dm.named_parameters():
        if p.device.type != "cuda":
            return (
                f"ComfyUI has part of the model off the GPU ({name} on {p.device}: low-VRAM partial "
                f"loading moves weights during the forward); running eagerly"
            )
    return None


def install_graphs(mp, run, adapter) -> GraphMode | None:
    """Object-patch ``diffusion_model.forward`` of ``mp`` with a graph-replaying forward (None: not offered)."""
    if adapter.graph_kwargs is None:
        log.warning(
            "ECAD CUDA graphs: not offered for %s (its forward reads per-call Python state); running eagerly",
            adapter.kind,
        )
        run.graph_status = {"active": False, "reason": f"not offered for {adapter.kind}"}
        return None
    dm = mp.model.diffusion_model
    # another node's patch of the forward (earlier in the chain) is what runs, not the class forward
    original = mp.object_patches.get("diffusion_model.forward") or type(dm).forward.__get__(dm)
    gm = GraphMode(
        dm,
        run.engine,
        original=original,
        key_kwargs=adapter.graph_kwargs,
        defer_checks=True,
        run_check=lambda: comfy_run_check(dm),
        prepare=adapter.graph_prepare,
    )
    run.graph_mode = gm
    if gm.active:
        mp.add_object_patch("diffusion_model.forward", gm.forward)
    return gm
