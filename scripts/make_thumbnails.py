"""Writes the template browser's thumbnail next to each example workflow (example_workflows/<name>.jpg) and the
registry icon (web/icon.png, pyproject's [tool.comfy] Icon).

ComfyUI's template browser (frontend 1.32, GET /api/workflow_templates) lists a pack's example workflows by file
name and shows ``<name>.jpg`` beside each. The example models are real checkpoints that the tests replace by
random-weight ones, so a thumbnail is a diagram of what the workflow does (its node chain) with the schedule
it uses drawn as the Preview node draws it.

    .venv/bin/python scripts/make_thumbnails.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ecad_core import families, load_schedule  # noqa: E402

SIZE = (512, 384)
BG, INK, DIM, ACCENT = (24, 26, 32), (235, 235, 240), (150, 155, 170), (94, 170, 255)
# per workflow: title, subtitle, the node chain, the schedule drawn (a shipped preset) or None (a search)
THUMBS = {
    "ecad_pixart_alpha": ("PixArt-α + ECAD preset", None, "pixart-alpha-256-fast"),
    "ecad_pixart_sigma": ("PixArt-Σ + ECAD preset", None, "pixart-sigma-256-fast"),
    "ecad_flux_dev": ("FLUX.1-dev + ECAD preset", None, "flux-dev-256-fast"),
    "ecad_evolve_pixart_alpha": ("Evolve your own schedule", "search → Pareto front → Apply", None),
    "ecad_evolve_sd3": ("SD3: evolve a schedule", "search → Pareto front → Apply", None),
    "ecad_evolve_qwen_image": ("Qwen-Image: evolve a schedule", "search → Pareto front → Apply", None),
    "ecad_evolve_flux2": ("FLUX.2: evolve a schedule", "search → Pareto front → Apply", None),
    "ecad_evolve_chroma": ("Chroma: evolve a schedule", "search → Pareto front → Apply", None),
    "ecad_evolve_zimage": ("Z-Image: evolve a schedule", "search → Pareto front → Apply", None),
    "ecad_evolve_wan21_t2v": ("Wan 2.1 video: evolve", "search → Pareto front → Apply → video", None),
    "ecad_wan22_two_experts": ("Wan 2.2: two experts", "an Apply per expert, a stage each", None),
    "ecad_evolve_hunyuan_video15_t2v": ("HunyuanVideo 1.5: evolve", "search → Pareto front → Apply → video", None),
}
CHAINS = {
    None: ["Load model", "Evolve ECAD", "Apply ECAD", "KSampler"],
    "preset": ["Load model", "Apply ECAD", "KSampler", "Image"],
}


def _font(size: int):
    # DejaVu has α, Σ, ×, arrows; Pillow's built-in font (the fallback) lacks them
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _schedule_picture(key: str, box: tuple[int, int]) -> Image.Image:
    s = load_schedule(REPO / "schedules" / f"{key}.json")
    fam = families.find(s.layout.family)
    comps = [c for _, c in s.layout.iter_units()]
    col = np.array([fam.color(c) if fam else families.DEFAULT_COLOR for c in comps], np.float32)
    grid = np.where(s.effective_bits()[..., None], col[None], np.float32(0.12))
    img = Image.fromarray((grid * 255).astype(np.uint8), "RGB")
    return img.resize(box, Image.NEAREST)


def _front_picture(box: tuple[int, int]) -> Image.Image:
    """A stylised Pareto front: quality loss falling as compute grows, one point picked."""
    w, h = box
    img = Image.new("RGB", box, (34, 37, 46))
    d = ImageDraw.Draw(img)
    d.line([(20, 10), (20, h - 20), (w - 10, h - 20)], fill=DIM, width=2)
    # low compute: high loss (top); full compute: no loss (bottom)
    pts = [(20 + (w - 40) * x, 10 + (h - 40) * (1 - (1 - x) ** 2.2)) for x in np.linspace(0.05, 0.95, 9)]
    d.line(pts, fill=DIM, width=1)
    for i, (x, y) in enumerate(pts):
        r = 6 if i == 4 else 4
        d.ellipse([x - r, y - r, x + r, y + r], fill=ACCENT if i == 4 else INK)
    d.text((w - 14, h - 18), "compute", fill=DIM, font=_font(12), anchor="rb")
    d.text((26, 8), "quality loss", fill=DIM, font=_font(12), anchor="lt")
    return img


def _measured(key: str) -> str:
    """The preset's speedup as its label says it: measured by ECAD, on which GPU, at which size."""
    s = load_schedule(REPO / "schedules" / f"{key}.json")
    gpu = s.metrics["ecad_latency_gpu"].removeprefix("NVIDIA ")
    h, w = s.provenance["resolution"]
    return f"{s.metrics['ecad_latency_speedup']:.2f}× faster, measured by ECAD on {gpu} at {w}×{h}"


def thumbnail(name: str) -> Image.Image:
    title, subtitle, preset = THUMBS[name]
    subtitle = subtitle or _measured(preset)
    img = Image.new("RGB", SIZE, BG)
    d = ImageDraw.Draw(img)
    d.text((24, 20), title, fill=INK, font=_font(30))
    d.text((24, 60), subtitle, fill=DIM, font=_font(18))
    chain = CHAINS[None if preset is None else "preset"]
    x, y, bw, bh, gap = 24, 104, 98, 40, 20
    for i, label in enumerate(chain):
        fill = (45, 70, 110) if "ECAD" in label else (52, 55, 66)
        d.rounded_rectangle([x, y, x + bw, y + bh], radius=8, fill=fill, outline=ACCENT if "ECAD" in label else DIM)
        d.text((x + bw / 2, y + bh / 2), label, fill=INK, font=_font(13), anchor="mm")
        if i < len(chain) - 1:
            d.line([(x + bw + 3, y + bh / 2), (x + bw + gap - 4, y + bh / 2)], fill=DIM, width=2)
            d.polygon(
                [
                    (x + bw + gap - 3, y + bh / 2),
                    (x + bw + gap - 9, y + bh / 2 - 4),
                    (x + bw + gap - 9, y + bh / 2 + 4),
                ],
                fill=DIM,
            )
        x += bw + gap
    box = (464, 190)
    if preset is None:
        pic, caption = _front_picture(box), "the front: pick a point, or let the node pick for a target speedup"
    else:
        pic, caption = _schedule_picture(preset, box), f"{preset}: steps ↓, units →; bright = computed, dark = reused"
    img.paste(pic, (24, 160))
    d.text((24, 372), caption, fill=DIM, font=_font(12), anchor="lb")
    return img


ICON_SIZE = 256  # the registry wants a square icon of at most 400 px


def icon() -> Image.Image:
    """A cache schedule in miniature (computed cells bright, reused dark) under the name."""
    img = Image.new("RGB", (ICON_SIZE, ICON_SIZE), BG)
    d = ImageDraw.Draw(img)
    s = load_schedule(REPO / "schedules" / "pixart-alpha-256-fast.json")
    bits = s.effective_bits()[:8, :24]
    fam = families.find(s.layout.family)
    comps = [c for _, c in s.layout.iter_units()][:24]
    cell, x0, y0 = 9, 20, 24
    for r, row in enumerate(bits):
        for c, on in enumerate(row):
            col = tuple(int(255 * v) for v in fam.color(comps[c])) if on else (48, 51, 62)
            d.rectangle([x0 + c * cell, y0 + r * cell, x0 + c * cell + cell - 2, y0 + r * cell + cell - 2], fill=col)
    d.text((ICON_SIZE / 2, 178), "ECAD", fill=INK, font=_font(64), anchor="mm")
    d.text((ICON_SIZE / 2, 228), "cache schedules", fill=DIM, font=_font(20), anchor="mm")
    return img


def main() -> int:
    out = REPO / "example_workflows"
    names = sorted(p.stem for p in out.glob("*.json"))
    missing = [n for n in names if n not in THUMBS]
    if missing:
        print(f"no thumbnail recipe for {missing}: add them to THUMBS", file=sys.stderr)
        return 1
    for name in names:
        json.loads((out / f"{name}.json").read_text(encoding="utf-8"))  # a workflow, not a stray file
        path = out / f"{name}.jpg"
        thumbnail(name).save(path, "JPEG", quality=72, optimize=True)
        print(f"wrote {path}")
    icon().save(REPO / "web" / "icon.png", optimize=True)
    print(f"wrote {REPO / 'web' / 'icon.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
