"""Other DiTs with ComfyUI's ``patches_replace["dit"]`` block hooks (HunyuanVideo 1.0, LTX-Video): one unit per
block that reuses the block's residual (output minus input), family ``dit_blocks``, through the generic
``install_block_reuse``. SD3/MMDiT, Wan, Qwen-Image and Chroma have component-level families of their own (detected
first: lower ``order``); they stay listed here for the models those adapters decline (e.g. a one-block MMDiT)."""

from __future__ import annotations

from .base import BlockPoint, ComfyAdapter, HookPath, Unit, is_instance

# ComfyUI model class -> (attribute of its double-type blocks, attribute of its single blocks)
MODELS = {
    "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT": ("joint_blocks", None),  # SD3 / SD3.5
    "comfy.ldm.wan.model.WanModel": ("blocks", None),  # Wan 2.x
    "comfy.ldm.hunyuan_video.model.HunyuanVideo": ("double_blocks", "single_blocks"),
    "comfy.ldm.qwen_image.model.QwenImageTransformer2DModel": ("transformer_blocks", None),
    "comfy.ldm.chroma.model.Chroma": ("double_blocks", "single_blocks"),
    "comfy.ldm.lightricks.model.LTXVModel": ("transformer_blocks", None),
}


class DitBlocksComfy(ComfyAdapter):
    family = "dit_blocks"
    supports = "at block level " + ", ".join(c.rpartition(".")[2] for c in MODELS)
    order = 90
    classes = tuple(MODELS)
    units_timeable = True

    @classmethod
    def _attrs(cls, dm) -> tuple[str, str | None] | None:
        for c, (double, single) in MODELS.items():
            if is_instance(dm, c) and hasattr(dm, double):
                return double, single
        return None

    @classmethod
    def matches(cls, diffusion_model):
        return cls._attrs(diffusion_model) is not None

    def __init__(self, dm):
        super().__init__(dm)
        attrs = self._attrs(dm)
        if attrs is None:
            raise TypeError(f"{type(dm).__name__} is not a model {type(self).__name__} serves")
        self.double_attr, self.single_attr = attrs

    def counts(self):
        nd = len(getattr(self.dm, self.double_attr))
        return nd, len(getattr(self.dm, self.single_attr)) if self.single_attr else 0

    @property
    def kind(self):
        nd, ns = self.counts()
        return f"ComfyUI {type(self.dm).__name__} ({nd}{f' + {ns} single' if ns else ''} blocks, block-level units)"

    def units(self):
        nd, ns = self.counts()
        return [Unit(f"{self.double_attr}.{i}", "block", None) for i in range(nd)] + [
            Unit(f"{self.single_attr}.{j}", "block", None) for j in range(ns)
        ]

    def block_points(self):
        nd, ns = self.counts()
        return [BlockPoint("double_block", i, i, 1) for i in range(nd)] + [
            BlockPoint("single_block", j, nd + j, 1) for j in range(ns)
        ]

    def install(self, mp, run):
        self.install_block_reuse(mp, run)
        label = type(self.dm).__name__
        run.hook_path = HookPath(label, "block-level reuse (ComfyUI's dit block hooks)", restated=False)
