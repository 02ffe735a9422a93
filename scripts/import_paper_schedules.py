"""Convert the 17 learned schedules of the ECAD paper into shipped presets (schedules/).

Usage: python scripts/import_paper_schedules.py [REFERENCE_DIR] [OUT_DIR]
REFERENCE_DIR defaults to ../shared/ecad-reference/schedules/schedules_in_paper.
Re-running gives byte-identical files.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecad_core.schedule import load_schedule  # noqa: E402

PAPER = (
    "ECAD: Evolutionary Caching to Accelerate Your Off-the-Shelf Diffusion Model "
    "(Aggarwal, Shrivastava, Gwilliam; arXiv 2506.15682; ICLR 2026)"
)
REPO = "github.com/AniAggarwal/ecad @ a2f0534"
HF = {
    "pixart-alpha": "PixArt-alpha/PixArt-XL-2-256x256",
    "pixart-sigma": "PixArt-alpha/PixArt-Sigma-XL-2-256x256",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
}
# No-cache latency (ms/image, A6000) measured by ECAD for the same setting: for the speedup ratio.
BASE_LATENCY = {
    ("pixart-alpha", 256): 165.7,
    ("pixart-sigma", 256): 167.6,
    ("flux-dev", 256): 2620.1,
    ("flux-dev", 1024): 18297.6,
}

# (source path, preset name, model, resolution, label, calibration notes)
PRESETS = [
    ("pixart_alpha_256/ours_fast.json", "pixart-alpha-256-fast", "pixart-alpha", 256, "fast", {}),
    ("pixart_alpha_256/ours_faster.json", "pixart-alpha-256-faster", "pixart-alpha", 256, "faster", {}),
    ("pixart_alpha_256/ours_fastest.json", "pixart-alpha-256-fastest", "pixart-alpha", 256, "fastest", {}),
    (
        "pixart_sigma_256/ours_fast.json",
        "pixart-sigma-256-fast",
        "pixart-sigma",
        256,
        "fast",
        {"seeded_from": "the PixArt-α search population"},
    ),
    (
        "pixart_alpha_to_sigma_transfer/pixart_alpha_gen_200.json",
        "pixart-alpha-256-gen200",
        "pixart-alpha",
        256,
        "gen 200",
        {},
    ),
    (
        "pixart_alpha_to_sigma_transfer/pixart_alpha_gen_250.json",
        "pixart-alpha-256-gen250",
        "pixart-alpha",
        256,
        "gen 250",
        {},
    ),
    (
        "pixart_alpha_to_sigma_transfer/pixart_sigma_from_alpha_gen_200.json",
        "pixart-sigma-256-from-alpha-gen200",
        "pixart-sigma",
        256,
        "α→Σ transfer gen 200",
        {"transfer": "PixArt-α schedule run on PixArt-Σ"},
    ),
    (
        "pixart_alpha_to_sigma_transfer/pixart_sigma_from_alpha_gen_250.json",
        "pixart-sigma-256-from-alpha-gen250",
        "pixart-sigma",
        256,
        "α→Σ transfer gen 250",
        {"transfer": "PixArt-α schedule run on PixArt-Σ"},
    ),
    (
        "pixart_alpha_ablations/pop_24_imgs_pp_10_prompts_100_highest_tmacs.json",
        "pixart-alpha-256-ablation-pop24",
        "pixart-alpha",
        256,
        "ablation: population 24",
        {"population": 24, "images_per_prompt": 10, "prompts": "100 ImageReward prompts"},
    ),
    (
        "pixart_alpha_ablations/pop_72_imgs_pp_03_prompts_100_highest_tmacs.json",
        "pixart-alpha-256-ablation-3img",
        "pixart-alpha",
        256,
        "ablation: 3 images/prompt",
        {"population": 72, "images_per_prompt": 3, "prompts": "100 ImageReward prompts"},
    ),
    (
        "pixart_alpha_ablations/pop_72_imgs_pp_10_prompts_100_baseline_highest_tmacs.json",
        "pixart-alpha-256-ablation-baseline",
        "pixart-alpha",
        256,
        "ablation: baseline",
        {"population": 72, "images_per_prompt": 10, "prompts": "100 ImageReward prompts"},
    ),
    (
        "pixart_alpha_ablations/pop_72_imgs_pp_10_prompts_33_highest_tmacs.json",
        "pixart-alpha-256-ablation-33prompts",
        "pixart-alpha",
        256,
        "ablation: 33 prompts",
        {"population": 72, "images_per_prompt": 10, "prompts": "33 ImageReward prompts"},
    ),
    (
        "pixart_alpha_ablations/pop_72_imgs_pp_5_prompts_200_drawbench_highest_tmacs.json",
        "pixart-alpha-256-ablation-drawbench",
        "pixart-alpha",
        256,
        "ablation: DrawBench",
        {"population": 72, "images_per_prompt": 5, "prompts": "200 DrawBench prompts"},
    ),
    ("flux_256/ours_fast.json", "flux-dev-256-fast", "flux-dev", 256, "fast", {"guidance": 5.0}),
    ("flux_256/ours_faster.json", "flux-dev-256-faster", "flux-dev", 256, "faster", {"guidance": 5.0}),
    (
        "flux_256_to_1024/fast_256_to_1024.json",
        "flux-dev-1024-fast",
        "flux-dev",
        1024,
        "fast (256-calibrated)",
        {"guidance": 5.0, "calibrated_at": 256},
    ),
    (
        "flux_256_to_1024/slow_256_to_1024.json",
        "flux-dev-1024-slow",
        "flux-dev",
        1024,
        "slow (256-calibrated)",
        {"guidance": 5.0, "calibrated_at": 256},
    ),
]


def main():
    src_dir = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/ecad-reference/schedules/schedules_in_paper"
    )
    out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "schedules"
    for rel, name, model, res, label, calib in PRESETS:
        s = load_schedule(src_dir / rel)
        ecad = s.provenance["ecad"]
        m = re.search(r"gen_(\d+)_cand_(\d+)", ecad.get("name") or "")
        em = s.metrics
        lat = em.get("latency", {})
        metrics = {"ecad_total_macs_T": round(em["total_macs_T"], 4) if "total_macs_T" in em else None}
        if lat:
            metrics.update(
                ecad_latency_ms=round(lat["avg"], 2),
                ecad_latency_gpu=lat.get("gpu"),
                ecad_latency_batch=lat.get("batch_size"),
            )
            base = BASE_LATENCY.get((model, res))
            if base:
                metrics["ecad_latency_speedup"] = round(base / lat["avg"], 2)
        prov = {
            "paper": PAPER,
            "source": f"{REPO}: schedules/schedules_in_paper/{rel}",
            "model": HF[model],
            "resolution": [res, res],
            "steps": s.steps,
            "generation": int(m.group(1)) if m else None,
            "candidate": int(m.group(2)) if m else None,
            "search": "NSGA-II (ECAD reference run)",
            "calibration": calib,
            "label": label,
            "ecad": dict(ecad.items()),
        }
        out = s.copy(name=name, model=model, provenance=prov, metrics=metrics)
        out.save(out_dir / f"{name}.json")
        print(f"{name}: {out.summary()['recompute_fraction']:.3f} recompute, {metrics}")


if __name__ == "__main__":
    main()
