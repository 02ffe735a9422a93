"""The toy family's record (would be ecad_core/families/toy.py)."""

from __future__ import annotations

from .base import Family, Variant, count_blocks


class Toy(Family):
    name = "toy"
    label = "Toy"
    order = 80
    groups = (("", ("mix", "mlp")),)
    group_names = ("blocks",)
    variants = (
        Variant(
            "toy-small",
            "Toy-S",
            {
                "hidden": 8,
                "heads": 1,
                "depth": 3,
                "mlp_ratio": 2.0,
                "patch": 1,
                "latent_channels": 8,
                "out_channels": 8,
                "text_tokens": 1,
                "extra": {"embed_width": 8},
            },
        ),
    )
    default_variant = "toy-small"
    colors = {"mix": (1.0, 0.0, 0.0), "mlp": (0.0, 0.0, 1.0)}
    attention_components = ("mix",)

    def detect(self, keys, key_set):
        if "toy_embed.weight" in key_set:
            n = count_blocks(keys, "layers.")
            if n:
                return (n,), "toy"
        return None

    def arch_from_diffusers_config(self, c, name, text_tokens):
        if c.get("_class_name") != "ToyTransformer":
            return None
        w = int(c["width"])
        return dict(
            name=name or "toy-config",
            hidden=w,
            heads=1,
            depth=int(c["depth"]),
            mlp_ratio=2.0,
            patch=1,
            latent_channels=w,
            out_channels=w,
            text_tokens=text_tokens or 1,
            extra={"embed_width": w},
        )

    def step_macs(self, a, n_image, n_text, attention, height, width):
        D, F = a.hidden, a.ff_dim
        return [[n_image * D * D, 2 * n_image * D * F]], {"toy_embed": n_image * a.extra["embed_width"] * D}
