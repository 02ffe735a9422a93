"""Writes the video example workflows (issue #18) to example_workflows/ (then run scripts/make_api_workflows.py for
their API prompts in workflows/api/):

* ``ecad_evolve_wan21_t2v.json``: Wan 2.1 T2V 1.3B; Evolve ECAD Schedule searches a schedule on the user's prompts
  (single-frame samples: the units are the same at any length), its picked point drives the text-to-video KSampler.
* ``ecad_wan22_two_experts.json``: Wan 2.2 T2V A14B, the high-noise expert for steps 0-9 and the low-noise expert
  for steps 10-19 (two KSamplerAdvanced stages), each through its own Apply ECAD Cache Schedule; each reads the rows
  of its own stage from its schedule (the trajectory rule, docs/schedule-format.md).
* ``ecad_evolve_hunyuan_video15_t2v.json``: HunyuanVideo 1.5 T2V; Evolve -> Apply -> KSampler, as for Wan.

Widget values are given by input name and laid out from a live server's /object_info, so the files follow the
nodes' inputs. Run from the repo root: ``.venv/bin/python scripts/make_video_workflows.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from ui_workflow import ui_workflow  # noqa: E402  (scripts/, this file's folder)

from comfy_harness.server import ComfyServer, _widget_layouts  # noqa: E402

PROMPTS = (
    "a red fox running through a snowy forest, tracking shot\n"
    "waves crashing on a rocky coast at sunset, slow motion\n"
    "a street market at night, people walking, neon signs"
)
NEGATIVE = "blurry, low quality, static, distorted, watermark, text"
POSITIVE = "a red fox running through a snowy forest at golden hour, tracking shot, cinematic, highly detailed"


def evolve_values(steps, cfg, sampler, scheduler, width, height, name, target):
    return dict(
        prompts=PROMPTS,
        seeds_per_prompt=1,
        first_seed=0,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler,
        scheduler=scheduler,
        width=width,
        height=height,
        population=16,
        generations=8,
        time_budget_minutes=0.0,
        quality_metric="latent",
        compute_objective="macs",
        target_speedup=target,
        output_name=name,
        search_seed=0,
        resume=True,
    )


APPLY = dict(preset="off", offload_cache_to_cpu=False, cuda_graphs=False, embedded_schedule="")


def evolve_t2v(name, model_file, clip, vae_file, latent_node, size, note, search, ks):
    """Loader + text encoder + VAE, Evolve -> Apply -> KSampler -> VAEDecode -> SaveAnimatedWEBP, the schedule
    preview. ``clip``: (loader node, its widget values); ``ks``: (steps, cfg, sampler, scheduler); ``size``: (width,
    height, length)."""
    steps, cfg, sampler, scheduler = ks
    w, h, length = size
    return [
        (
            1,
            "UNETLoader",
            [0, 0],
            [340, 82],
            dict(unet_name=model_file, weight_dtype="default"),
            [],
            [("MODEL", "MODEL", [1, 2])],
            None,
        ),
        (
            2,
            clip[0],
            [0, 140],
            [340, 106],
            clip[1],
            [],
            [("CLIP", "CLIP", [3, 4, 5])],
            None,
        ),
        (3, "VAELoader", [0, 300], [340, 58], dict(vae_name=vae_file), [], [("VAE", "VAE", [6])], None),
        (
            4,
            "EvolveECADSchedule",
            [380, 0],
            [440, 640],
            evolve_values(steps, cfg, sampler, scheduler, search[0], search[1], search[2], search[3]),
            [
                ("model", "MODEL", 1),
                ("clip", "CLIP", 3),
                ("positive", "CONDITIONING", None),
                ("negative", "CONDITIONING", None),
                ("vae", "VAE", None),
                ("warm_start", "ECAD_SCHEDULE", None),
            ],
            [("schedule", "ECAD_SCHEDULE", [7, 8]), ("front", "IMAGE", []), ("report", "STRING", [])],
            None,
        ),
        (
            5,
            "ApplyECADSchedule",
            [880, 0],
            [380, 130],
            dict(APPLY),
            [("model", "MODEL", 2), ("schedule", "ECAD_SCHEDULE", 7)],
            [("MODEL", "MODEL", [9])],
            None,
        ),
        (
            6,
            "CLIPTextEncode",
            [880, 180],
            [400, 160],
            dict(text=POSITIVE),
            [("clip", "CLIP", 4)],
            [("CONDITIONING", "CONDITIONING", [10])],
            "CLIP Text Encode (Positive Prompt)",
        ),
        (
            7,
            "CLIPTextEncode",
            [880, 380],
            [400, 120],
            dict(text=NEGATIVE),
            [("clip", "CLIP", 5)],
            [("CONDITIONING", "CONDITIONING", [11])],
            "CLIP Text Encode (Negative Prompt)",
        ),
        (
            8,
            latent_node,
            [880, 540],
            [320, 130],
            dict(width=w, height=h, length=length, batch_size=1),
            [],
            [("LATENT", "LATENT", [12])],
            None,
        ),
        (
            9,
            "KSampler",
            [1320, 0],
            [320, 262],
            dict(seed=42, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler, denoise=1.0),
            [
                ("model", "MODEL", 9),
                ("positive", "CONDITIONING", 10),
                ("negative", "CONDITIONING", 11),
                ("latent_image", "LATENT", 12),
            ],
            [("LATENT", "LATENT", [13])],
            None,
        ),
        (
            10,
            "VAEDecode",
            [1680, 0],
            [210, 46],
            {},
            [("samples", "LATENT", 13), ("vae", "VAE", 6)],
            [("IMAGE", "IMAGE", [14])],
            None,
        ),
        (
            11,
            "SaveAnimatedWEBP",
            [1680, 100],
            [400, 420],
            dict(filename_prefix=name, fps=16.0, lossless=False, quality=90, method="default"),
            [("images", "IMAGE", 14)],
            [],
            None,
        ),
        (
            12,
            "PreviewECADSchedule",
            [380, 700],
            [440, 300],
            {},
            [("schedule", "ECAD_SCHEDULE", 8)],
            [("IMAGE", "IMAGE", [])],
            None,
        ),
        (13, "Note", [880, 720], [400, 200], dict(text=note), [], [], None),
    ]


WAN21_NOTE = (
    "Wan 2.1 T2V 1.3B + ECAD. Evolve ECAD Schedule searches a cache schedule for this model on YOUR prompts "
    "(each candidate sampled and compared with full compute, single frames at the search's width x height: a "
    "schedule's units are the same at any video length). Its picked point drives the text-to-video KSampler "
    "through Apply ECAD Cache Schedule; the units (self_attn, cross_attn, ffn per block) cache every frame's "
    "tokens. The front is saved under models/ecad_schedules/<output_name>/front and listed in Apply's preset "
    "dropdown: pick a point there and remove the Evolve link to reuse it without searching again. The "
    "KSampler's steps/sampler/scheduler must match the search's."
)
HV15_NOTE = (
    "HunyuanVideo 1.5 T2V + ECAD. Evolve ECAD Schedule searches a cache schedule on YOUR prompts (single frames at "
    "the search's size), its picked point drives the text-to-video KSampler through Apply ECAD Cache Schedule. "
    "Units per double-stream block: full_attn (joint attention), full_ff (video MLP), full_ff_context (text MLP); "
    "each caches every frame's tokens. Pick a point of the saved front in Apply's preset dropdown to reuse it."
)
WAN22_NOTE = (
    "Wan 2.2 T2V A14B: the high-noise expert denoises steps 0-9, the low-noise expert steps 10-19 (two "
    "KSamplerAdvanced stages of one 20-step trajectory). Each expert has its own Apply ECAD Cache Schedule and "
    "its own schedule (same layout: 40 blocks x self_attn/cross_attn/ffn): each stage reads the rows of ITS steps "
    "from a 20-row schedule (stage 1 rows 0-9, stage 2 rows 10-19), so a schedule searched for the whole "
    "trajectory serves either expert. Choose your schedules in the two preset dropdowns (user/... files in "
    "models/ecad_schedules; 'off' runs the expert uncached). To search one per expert, run Evolve ECAD Schedule "
    "with that expert's MODEL at the same steps, sampler and scheduler."
)


def wan22_nodes():
    common = dict(noise_seed=42, steps=20, cfg=3.5, sampler_name="euler", scheduler="simple")
    ks1 = dict(common, add_noise="enable", start_at_step=0, end_at_step=10, return_with_leftover_noise="enable")
    ks2 = dict(common, add_noise="disable", start_at_step=10, end_at_step=10000, return_with_leftover_noise="disable")
    ks_in = lambda m, lat: [
        ("model", "MODEL", m),
        ("positive", "CONDITIONING", 20),
        ("negative", "CONDITIONING", 21),
        ("latent_image", "LATENT", lat),
    ]
    unet = lambda f: dict(unet_name=f, weight_dtype="default")
    return [
        (
            1,
            "UNETLoader",
            [0, 0],
            [360, 82],
            unet("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"),
            [],
            [("MODEL", "MODEL", [1])],
            "Load Diffusion Model (high noise)",
        ),
        (
            2,
            "UNETLoader",
            [0, 140],
            [360, 82],
            unet("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
            [],
            [("MODEL", "MODEL", [2])],
            "Load Diffusion Model (low noise)",
        ),
        (
            3,
            "ModelSamplingSD3",
            [400, 0],
            [260, 58],
            dict(shift=8.0),
            [("model", "MODEL", 1)],
            [("MODEL", "MODEL", [3])],
            None,
        ),
        (
            4,
            "ModelSamplingSD3",
            [400, 140],
            [260, 58],
            dict(shift=8.0),
            [("model", "MODEL", 2)],
            [("MODEL", "MODEL", [4])],
            None,
        ),
        (
            5,
            "ApplyECADSchedule",
            [700, 0],
            [380, 130],
            dict(APPLY),
            [("model", "MODEL", 3), ("schedule", "ECAD_SCHEDULE", None)],
            [("MODEL", "MODEL", [5])],
            "Apply ECAD (high-noise expert)",
        ),
        (
            6,
            "ApplyECADSchedule",
            [700, 180],
            [380, 130],
            dict(APPLY),
            [("model", "MODEL", 4), ("schedule", "ECAD_SCHEDULE", None)],
            [("MODEL", "MODEL", [6])],
            "Apply ECAD (low-noise expert)",
        ),
        (
            7,
            "CLIPLoader",
            [0, 300],
            [360, 106],
            dict(clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan", device="default"),
            [],
            [("CLIP", "CLIP", [7, 8])],
            None,
        ),
        (
            8,
            "CLIPTextEncode",
            [400, 300],
            [400, 160],
            dict(text=POSITIVE),
            [("clip", "CLIP", 7)],
            [("CONDITIONING", "CONDITIONING", [20])],
            "CLIP Text Encode (Positive Prompt)",
        ),
        (
            9,
            "CLIPTextEncode",
            [400, 500],
            [400, 120],
            dict(text=NEGATIVE),
            [("clip", "CLIP", 8)],
            [("CONDITIONING", "CONDITIONING", [21])],
            "CLIP Text Encode (Negative Prompt)",
        ),
        (
            10,
            "EmptyHunyuanLatentVideo",
            [400, 660],
            [320, 130],
            dict(width=832, height=480, length=81, batch_size=1),
            [],
            [("LATENT", "LATENT", [22])],
            None,
        ),
        (
            11,
            "KSamplerAdvanced",
            [1120, 0],
            [320, 334],
            ks1,
            ks_in(5, 22),
            [("LATENT", "LATENT", [23])],
            "KSampler (high noise, steps 0-9)",
        ),
        (
            12,
            "KSamplerAdvanced",
            [1480, 0],
            [320, 334],
            ks2,
            ks_in(6, 23),
            [("LATENT", "LATENT", [24])],
            "KSampler (low noise, steps 10-19)",
        ),
        (
            13,
            "VAELoader",
            [1120, 400],
            [320, 58],
            dict(vae_name="wan_2.1_vae.safetensors"),
            [],
            [("VAE", "VAE", [25])],
            None,
        ),
        (
            14,
            "VAEDecode",
            [1840, 0],
            [210, 46],
            {},
            [("samples", "LATENT", 24), ("vae", "VAE", 25)],
            [("IMAGE", "IMAGE", [26])],
            None,
        ),
        (
            15,
            "SaveAnimatedWEBP",
            [1840, 100],
            [400, 420],
            dict(filename_prefix="ecad_wan22", fps=16.0, lossless=False, quality=90, method="default"),
            [("images", "IMAGE", 26)],
            [],
            None,
        ),
        (16, "Note", [1120, 500], [560, 220], dict(text=WAN22_NOTE), [], [], None),
    ]


WORKFLOWS = {
    "ecad_evolve_wan21_t2v.json": (
        lambda: evolve_t2v(
            "ecad_wan21",
            "wan2.1_t2v_1.3B_fp16.safetensors",
            ("CLIPLoader", dict(clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan", device="default")),
            "wan_2.1_vae.safetensors",
            "EmptyHunyuanLatentVideo",
            (832, 480, 33),
            WAN21_NOTE,
            (832, 480, "wan21-t2v-mine", 1.5),
            (30, 6.0, "uni_pc", "simple"),
        ),
        [
            ("Search a schedule for this model", [-20, -80, 860, 1100]),
            ("Generate the video with it", [860, -80, 1260, 1100]),
        ],
    ),
    "ecad_wan22_two_experts.json": (
        wan22_nodes,
        [
            ("Two experts, one schedule each", [-20, -80, 1140, 900]),
            ("Two stages of one trajectory", [1100, -80, 1180, 900]),
        ],
    ),
    "ecad_evolve_hunyuan_video15_t2v.json": (
        lambda: evolve_t2v(
            "ecad_hunyuan_video15",
            "hunyuanvideo1.5_480p_t2v_fp16.safetensors",
            (
                "DualCLIPLoader",
                dict(
                    clip_name1="qwen_2.5_vl_7b_fp8_scaled.safetensors",
                    clip_name2="byt5_small_glyphxl_fp16.safetensors",
                    type="hunyuan_video_15",
                    device="default",
                ),
            ),
            "hunyuanvideo1.5_vae_fp16.safetensors",
            "EmptyHunyuanVideo15Latent",
            (848, 480, 33),
            HV15_NOTE,
            (848, 480, "hunyuan-video15-t2v-mine", 1.5),
            (20, 6.0, "euler", "simple"),
        ),
        [
            ("Search a schedule for this model", [-20, -80, 860, 1100]),
            ("Generate the video with it", [860, -80, 1260, 1100]),
        ],
    ),
}


def widgets(node_def: dict, values: dict) -> list:
    """``values`` laid out as the frontend stores them (a seed's "control after generate": fixed)."""
    layout = _widget_layouts(node_def)[0]
    optional = set(node_def.get("input", {}).get("optional", {}))
    out, last = [], None
    for i, name in enumerate(layout):
        if name is None:
            out.append("fixed" if last in ("seed", "noise_seed") else "")
            continue
        if name not in values:
            if all(n is None or (n in optional and n not in values) for n in layout[i:]):
                break  # optional widgets left at their defaults (the frontend fills trailing ones in)
            raise KeyError(f"{node_def['name']}: no value for widget {name!r}")
        out.append(values[name])
        last = name
    return out


def build(name: str, nodes_fn, groups, info: dict) -> dict:
    nodes = [
        (nid, ntype, pos, size, [values["text"]] if ntype == "Note" else widgets(info[ntype], values), *rest)
        for nid, ntype, pos, size, values, *rest in nodes_fn()
    ]
    return ui_workflow(name, nodes, groups)


def main() -> None:
    with ComfyServer(ensure_models=False, support_pack=False) as srv:
        info = srv.object_info()
    for name, (nodes_fn, groups) in WORKFLOWS.items():
        path = REPO / "example_workflows" / name
        path.write_text(json.dumps(build(name, nodes_fn, groups, info), indent=2, ensure_ascii=False) + "\n")
        print("wrote", path.relative_to(REPO))
    print("now run scripts/make_api_workflows.py")


if __name__ == "__main__":
    main()
