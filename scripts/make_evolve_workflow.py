"""Writes example_workflows/ecad_evolve_pixart_alpha.json (then run scripts/make_api_workflows.py for its API prompt
in workflows/api/).

Evolve ECAD Schedule searches a schedule for PixArt-α 512px (ComfyUI v0.3.75's PixArt
cannot sample below 384px) on the user's own
prompts; its picked point feeds Apply ECAD Cache Schedule, which drives a normal
KSampler. Run from the repo root: ``python scripts/make_evolve_workflow.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ui_workflow import ui_workflow  # scripts/, this file's folder

REPO = Path(__file__).resolve().parents[1]
NAME = "ecad_evolve_pixart_alpha.json"
PROMPTS = (
    "A photo of an astronaut riding a horse on the moon\n"
    "A cozy cabin in a snowy forest at dusk, warm light in the windows\n"
    "A close-up portrait of an old fisherman, dramatic lighting\n"
    "A bowl of ramen with steam rising, studio photograph"
)
NOTE = (
    "Evolve ECAD Schedule runs ECAD's genetic search (NSGA-II) on YOUR model, prompts and sampler settings: "
    "every candidate schedule is sampled and compared with full compute on the same prompts and seeds.\n\n"
    "The Pareto front is written to models/ecad_schedules/<output_name>/front and shows up in the preset "
    "dropdown of Apply ECAD Cache Schedule. The node outputs the point picked for target_speedup.\n\n"
    "Cancel keeps a checkpoint: queue again to resume (raise 'generations' to search longer). The KSampler's "
    "steps/sampler/scheduler must match the search's for the schedule to be used as searched.\n\n"
    "To share the result: pick the point in Apply's preset dropdown (user/<output_name>/front/...) and remove "
    "the link from Evolve; the saved workflow then carries the schedule and runs where the file is missing."
)

# (id, type, pos, size, widgets, inputs [(name, type, link)], outputs [(name, type, [links])], title)
NODES = [
    (
        1,
        "UNETLoader",
        [0, 0],
        [340, 82],
        ["PixArt-XL-2-512x512.safetensors", "default"],
        [],
        [("MODEL", "MODEL", [1, 2])],
        None,
    ),
    (
        2,
        "CLIPLoader",
        [0, 140],
        [340, 106],
        ["t5xxl_fp16.safetensors", "pixart", "default"],
        [],
        [("CLIP", "CLIP", [3, 4, 5])],
        None,
    ),
    (
        3,
        "VAELoader",
        [0, 300],
        [340, 58],
        ["vae-ft-ema-560000-ema-pruned.safetensors"],
        [],
        [("VAE", "VAE", [6, 7])],
        None,
    ),
    (
        4,
        "EvolveECADSchedule",
        [400, 0],
        [420, 640],
        [
            PROMPTS,
            1,
            0,
            20,
            4.5,
            "euler",
            "normal",
            512,
            512,
            24,
            10,
            0.0,
            "latent",
            "macs",
            2.0,
            "pixart-alpha-512-mine",
            0,
            True,
        ],
        [
            ("model", "MODEL", 1),
            ("clip", "CLIP", 3),
            ("positive", "CONDITIONING", None),
            ("negative", "CONDITIONING", None),
            ("vae", "VAE", 6),
            ("warm_start", "ECAD_SCHEDULE", None),
        ],
        [("schedule", "ECAD_SCHEDULE", [8, 9]), ("front", "IMAGE", []), ("report", "STRING", [])],
        None,
    ),
    (
        5,
        "ApplyECADSchedule",
        [880, 0],
        [380, 130],
        ["off", False, False, ""],
        [("model", "MODEL", 2), ("schedule", "ECAD_SCHEDULE", 8)],
        [("MODEL", "MODEL", [10])],
        None,
    ),
    (
        6,
        "CLIPTextEncode",
        [880, 160],
        [400, 160],
        ["a photograph of a red fox sitting in a snowy forest, golden hour, highly detailed"],
        [("clip", "CLIP", 4)],
        [("CONDITIONING", "CONDITIONING", [11])],
        "CLIP Text Encode (Positive Prompt)",
    ),
    (
        7,
        "CLIPTextEncode",
        [880, 380],
        [400, 120],
        [""],
        [("clip", "CLIP", 5)],
        [("CONDITIONING", "CONDITIONING", [12])],
        "CLIP Text Encode (Negative Prompt)",
    ),
    (8, "EmptyLatentImage", [880, 540], [315, 106], [512, 512, 1], [], [("LATENT", "LATENT", [13])], None),
    (
        9,
        "KSampler",
        [1320, 0],
        [315, 262],
        [42, "fixed", 20, 4.5, "euler", "normal", 1.0],
        [
            ("model", "MODEL", 10),
            ("positive", "CONDITIONING", 11),
            ("negative", "CONDITIONING", 12),
            ("latent_image", "LATENT", 13),
        ],
        [("LATENT", "LATENT", [14])],
        None,
    ),
    (
        10,
        "VAEDecode",
        [1680, 0],
        [210, 46],
        [],
        [("samples", "LATENT", 14), ("vae", "VAE", 7)],
        [("IMAGE", "IMAGE", [15])],
        None,
    ),
    (11, "SaveImage", [1920, 0], [400, 420], ["ecad_evolved"], [("images", "IMAGE", 15)], [], None),
    (
        12,
        "PreviewECADSchedule",
        [1320, 320],
        [500, 300],
        [],
        [("schedule", "ECAD_SCHEDULE", 9)],
        [("image", "IMAGE", []), ("info", "STRING", [])],
        None,
    ),
    (13, "Note", [0, 420], [360, 300], [NOTE], [], [], None),
]


def build() -> dict:
    return ui_workflow(
        NAME,
        NODES,
        [
            ("Search a schedule for this model", [-20, -80, 860, 760]),
            ("Generate with the picked schedule", [860, -80, 1480, 720]),
        ],
    )


def main() -> None:
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    # example_workflows/ only: ComfyUI lists workflows/*.json as templates too (each would show twice)
    (REPO / "example_workflows" / NAME).write_text(text, encoding="utf-8")
    print("wrote", REPO / "example_workflows" / NAME, "- now run scripts/make_api_workflows.py")


if __name__ == "__main__":
    main()
