"""A schedule means the same on every path (issue #17), on a real ComfyUI v0.3.75 server: img2img, hires-fix,
KSamplerAdvanced and SplitSigmas stages, any scheduler and sampler. All-recompute reproduces the unpatched
latent bit for bit everywhere; a split run reads the rows of the unsplit run; Wan 2.2's two experts (two models,
an Apply each) each read the rows of their own stage."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from test_comfy_harness import _read_latent, ksampler_prompt

from comfy_harness.server import PromptExecutionError
from ecad_core import Schedule, load_schedule, make_layout

pytestmark = pytest.mark.comfy
_seeds = itertools.count(17000)
LAYOUTS = {
    "ecad_tiny_pixart_alpha": make_layout("pixart", 2),
    "ecad_tiny_flux_dev": make_layout("flux", 1, 1),
    "ecad_tiny_wan": make_layout("wan", 2),
}
SCHEDULERS = ["normal", "karras", "simple", "beta", "sgm_uniform"]
SAMPLERS = ["euler", "heun", "dpmpp_2m", "dpmpp_sde", "uni_pc"]
SCENARIOS = ["img2img-0.3", "img2img-0.5", "img2img-0.75", "hires", "advanced-2", "split-2"]
LINE = re.compile(
    r"ECAD (\S+): (\d+)/(\d+) unit calls reused.*?; ((?:img2img [^:]*: )?steps? \d+.*?); rows used.*?"
    r"reused per step ([\d,]+)"
)


@pytest.fixture(scope="module")
def schedules(comfy_server):
    d = comfy_server.base_dir / "models" / "ecad_schedules"
    d.mkdir(parents=True, exist_ok=True)
    for model, lay in LAYOUTS.items():
        Schedule.full(lay, 4, name=f"traj-{model}-full").save(d / f"traj-{model}-full.json")
        rng = np.random.default_rng(17)
        for tag in ("a", "b"):
            Schedule(lay, rng.random((8, lay.n_units)) < 0.4, name=f"traj-{model}-{tag}").save(
                d / f"traj-{model}-{tag}.json"
            )
    return d


def _base(model: str, seed: int) -> dict:
    """Loader, conditionings and latent of ``ksampler_prompt`` (no sampler, no outputs)."""
    p = ksampler_prompt(model, "unused", seed)
    for k in ("5", "6", "7", "8", "9"):
        p.pop(k)
    if p["4"]["class_type"] == "EmptySD3LatentImage":  # FLUX, Wan: the smallest latent keeps the grid fast
        p["4"]["inputs"].update(width=64, height=64)
    return p


def _positive(model: str) -> list:
    return ["10", 0] if model == "ecad_tiny_flux_dev" else ["2", 0]


def _cfg(model: str) -> float:
    return 1.0 if "flux" in model else 2.0


def _add_chain(p: dict, model: str, model_node: str, tag: str, scenario: str, scheduler: str, sampler: str, seed):
    """Nodes ``tag``-prefixed: the scenario's sampling of ``model_node``, its final latent saved as ``tag``."""
    pos, neg, cfg = _positive(model), ["3", 0], _cfg(model)

    def ks(key, latent, steps, denoise, s=seed):
        p[key] = {
            "class_type": "KSampler",
            "inputs": {
                "model": [model_node, 0],
                "positive": pos,
                "negative": neg,
                "latent_image": latent,
                "seed": s,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler,
                "scheduler": scheduler,
                "denoise": denoise,
            },
        }

    def ksa(key, latent, start, end, add_noise, leftover):
        p[key] = {
            "class_type": "KSamplerAdvanced",
            "inputs": {
                "model": [model_node, 0],
                "add_noise": add_noise,
                "noise_seed": seed,
                "steps": 6,
                "cfg": cfg,
                "sampler_name": sampler,
                "scheduler": scheduler,
                "positive": pos,
                "negative": neg,
                "latent_image": latent,
                "start_at_step": start,
                "end_at_step": end,
                "return_with_leftover_noise": leftover,
            },
        }

    last = f"{tag}k"
    if scenario.startswith("img2img"):
        ks(last, ["4", 0], 4, float(scenario.split("-")[1]))
    elif scenario == "hires":  # a full pass, upscaled, a second pass at denoise 0.5
        ks(f"{tag}a", ["4", 0], 3, 1.0)
        p[f"{tag}u"] = {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": [f"{tag}a", 0], "upscale_method": "nearest-exact", "scale_by": 2.0},
        }
        ks(last, [f"{tag}u", 0], 3, 0.5, s=seed + 1)
    elif scenario == "advanced-2":
        ksa(f"{tag}a", ["4", 0], 0, 3, "enable", "enable")
        ksa(last, [f"{tag}a", 0], 3, 10000, "disable", "disable")
    elif scenario == "split-2":
        p[f"{tag}s"] = {
            "class_type": "BasicScheduler",
            "inputs": {"model": [model_node, 0], "scheduler": scheduler, "steps": 6, "denoise": 1.0},
        }
        p[f"{tag}p"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": [f"{tag}s", 0], "step": 3}}
        p[f"{tag}m"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
        for key, latent, sig, noise in (
            (f"{tag}a", ["4", 0], 0, True),
            (last, [f"{tag}a", 0], 1, False),
        ):
            p[key] = {
                "class_type": "SamplerCustom",
                "inputs": {
                    "model": [model_node, 0],
                    "add_noise": noise,
                    "noise_seed": seed,
                    "cfg": cfg,
                    "positive": pos,
                    "negative": neg,
                    "sampler": [f"{tag}m", 0],
                    "sigmas": [f"{tag}p", sig],
                    "latent_image": latent,
                },
            }
    else:
        raise AssertionError(scenario)
    p[f"{tag}o"] = {"class_type": "SaveLatent", "inputs": {"samples": [last, 0], "filename_prefix": f"latents/{tag}"}}


def _apply(p: dict, key: str, model_from: str, preset: str) -> None:
    p[key] = {
        "class_type": "ApplyECADSchedule",
        "inputs": {"model": [model_from, 0], "preset": preset, "offload_cache_to_cpu": False},
    }


def _latents(srv, entry) -> dict:
    out = {}
    for f in srv.output_files(entry, "latents"):
        out[f.name.rsplit("_", 2)[0]] = _read_latent(f)
    return out


COMBOS = [
    ("ecad_tiny_pixart_alpha", sc, sched, SAMPLERS[(i + j) % len(SAMPLERS)])
    for i, sc in enumerate(SCENARIOS)
    for j, sched in enumerate(SCHEDULERS)
] + [("ecad_tiny_flux_dev", sc, SCHEDULERS[i % 5], SAMPLERS[(i + 2) % 5]) for i, sc in enumerate(SCENARIOS)]


@pytest.mark.slow
def test_all_recompute_equals_unpatched_on_every_path(comfy_server, schedules):
    # before: img2img / hires second passes remapped "keeping the recompute count" (steps holding no row reused
    # everything), a first stage took itself for a whole run, and a later stage's place depended on the scheduler
    srv = comfy_server
    seed = next(_seeds)
    by_model: dict[str, dict] = {}
    for model, sc, sched, sampler in COMBOS:
        p = by_model.setdefault(model, _base(model, seed))
        _apply(p, "20", "1", f"user/traj-{model}-full")
        for node, kind in (("1", "ref"), ("20", "ecad")):
            tag = f"{kind}-{model[10:]}-{sc}-{sched}-{sampler}".replace(".", "")
            _add_chain(p, model, node, tag, sc, sched, sampler, seed)
    start = len(srv.log_text())
    ids = [srv.queue(p) for p in by_model.values()]
    latents: dict = {}
    for i in ids:
        latents.update(_latents(srv, srv.wait(i, timeout=900)))
    bad = []
    for key in sorted(k for k in latents if k.startswith("ref-")):
        ours = latents["ecad-" + key[4:]]
        if not (ours.shape == latents[key].shape and (ours == latents[key]).all()):
            bad.append(key[4:])
    assert not bad, f"all-recompute changed the latent in {len(bad)} of {len(COMBOS)} cases: {bad}"
    assert len([k for k in latents if k.startswith("ref-")]) == len(COMBOS)
    lines = LINE.findall(srv.log_text()[start:])
    assert lines and all(int(r) == 0 for _, r, *_ in lines), [x for x in lines if int(x[1])]
    text = srv.log_text()[start:]
    assert "(stage 1 of a split run)" in text and "(stage 2 of a split run)" in text
    assert "img2img at denoise 0.5: steps 4\u20137 of 8" in text


def _runs_of(text: str, name: str) -> list[tuple[str, list[int]]]:
    return [(pos, [int(n) for n in per.split(",")]) for nm, _, _, pos, per in LINE.findall(text) if nm == name]


@pytest.mark.parametrize("model,scheduler", [("ecad_tiny_pixart_alpha", "normal"), ("ecad_tiny_flux_dev", "simple")])
def test_a_split_run_reuses_what_the_unsplit_run_reuses(comfy_server, schedules, model, scheduler):
    srv = comfy_server
    seed = next(_seeds)
    name = f"traj-{model}-a"
    p = _base(model, seed)
    _apply(p, "20", "1", f"user/{name}")
    _add_chain(p, model, "20", f"whole-{seed}", "img2img-1.0", scheduler, "euler", seed)
    p[f"whole-{seed}k"]["inputs"]["steps"] = 6
    _add_chain(p, model, "20", f"split-{seed}", "advanced-2", scheduler, "euler", seed)
    start = len(srv.log_text())
    srv.run(p, timeout=600)
    runs = _runs_of(srv.log_text()[start:], name)
    assert len(runs) == 3, runs
    whole = next(r for pos, r in runs if "split" not in pos)
    one = next(r for pos, r in runs if "stage 1" in pos)
    two_pos, two = next((pos, r) for pos, r in runs if "stage 2" in pos)
    assert "steps 0\u20135 of 6" in next(pos for pos, _ in runs if "split" not in pos)
    assert two_pos.startswith("steps 3\u20135 of 6 (stage 2 of a split run)")
    # the same units at the same global steps; stage 2's first step has nothing cached and computes
    assert one == whole[:3]
    assert two[1:] == whole[4:]
    assert two[0] == 0
    if whole[3]:
        assert f"step 3 computed {whole[3]} unit(s) its row reuses" in srv.log_text()[start:]


def test_wan22_two_experts_each_read_their_stage_rows(comfy_server, schedules):
    # Wan 2.2 14B's template: a high-noise expert for steps 0-3 and a low-noise one for steps 4-7, each through
    # its own Apply. Before: stage 1 spread all rows over its 4 steps (merging every reuse away: nothing cached)
    srv = comfy_server
    model = "ecad_tiny_wan"
    seed = next(_seeds)
    lay = LAYOUTS[model]
    p = _base(model, seed)
    p["30"] = {"class_type": "UNETLoader", "inputs": dict(p["1"]["inputs"])}
    _apply(p, "20", "1", f"user/traj-{model}-a")
    _apply(p, "21", "30", f"user/traj-{model}-b")
    common = {
        "positive": ["2", 0],
        "negative": ["3", 0],
        "noise_seed": seed,
        "steps": 8,
        "cfg": 2.0,
        "sampler_name": "euler",
        "scheduler": "simple",
    }
    p["40"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": dict(
            common,
            model=["20", 0],
            add_noise="enable",
            latent_image=["4", 0],
            start_at_step=0,
            end_at_step=4,
            return_with_leftover_noise="enable",
        ),
    }
    p["41"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": dict(
            common,
            model=["21", 0],
            add_noise="disable",
            latent_image=["40", 0],
            start_at_step=4,
            end_at_step=10000,
            return_with_leftover_noise="disable",
        ),
    }
    p["42"] = {"class_type": "SaveLatent", "inputs": {"samples": ["41", 0], "filename_prefix": "latents/wan22"}}
    start = len(srv.log_text())
    srv.run(p, timeout=600)
    text = srv.log_text()[start:]
    a, b = (load_schedule(schedules / f"traj-{model}-{t}.json") for t in "ab")
    ((pos1, r1),) = _runs_of(text, a.name)
    ((pos2, r2),) = _runs_of(text, b.name)
    assert pos1.startswith("steps 0\u20133 of 8 (stage 1 of a split run)")
    assert pos2.startswith("steps 4\u20137 of 8 (stage 2 of a split run)")
    # CFG: cond and uncond in one batch, one unit call per unit
    assert r1 == (~a.effective_bits()[:4]).sum(axis=1).tolist()
    assert r2 == [0] + (~b.bits[5:8]).sum(axis=1).tolist()
    assert sum(r1) > 0 and lay.n_units == 6


@pytest.mark.parametrize("other", ["EasyCache", "LazyCache"])
def test_steps_another_cache_serves_stay_in_the_statistics(comfy_server, schedules, other):
    # before: the model calls EasyCache/LazyCache served vanished from "n/m unit calls reused" (m shrank)
    srv = comfy_server
    model = "ecad_tiny_flux_dev"
    seed = next(_seeds)
    name = f"traj-{model}-a"
    p = _base(model, seed)
    _apply(p, "20", "1", f"user/{name}")
    p["21"] = {
        "class_type": other,
        "inputs": {
            "model": ["20", 0],
            "reuse_threshold": 3.0,
            "start_percent": 0.0,
            "end_percent": 1.0,
            "verbose": False,
        },
    }
    _add_chain(p, model, "21", f"other-{seed}", "img2img-1.0", "simple", "euler", seed)
    p[f"other-{seed}k"]["inputs"]["steps"] = 8
    start = len(srv.log_text())
    srv.run(p, timeout=600)
    text = srv.log_text()[start:]
    m = re.search(
        rf"ECAD {re.escape(name)}: (\d+)/(\d+) unit calls reused.*?, (\d+) model call\(s\) at step\(s\) [\d, -]+ "
        r"served by another node \((\d+) unit calls skipped\)",
        text,
    )
    assert m, text[-3000:]
    _, total, skipped_calls, skipped_units = map(int, m.groups())
    lay = LAYOUTS[model]
    assert skipped_calls > 0 and skipped_units == skipped_calls * lay.n_units
    # every step's unit calls are in the denominator: ECAD's own plus those the other node skipped
    assert total == 8 * lay.n_units


def test_pixart_area_below_the_size_limit_is_a_clear_error(comfy_server, schedules):
    # before: ComfyUI's bare ZeroDivisionError from deep in PixArt's positional embedding (the pack checked only
    # the whole latent)
    model = "ecad_tiny_pixart_alpha"
    seed = next(_seeds)
    p = _base(model, seed)
    _apply(p, "20", "1", f"user/traj-{model}-full")
    p["22"] = {
        "class_type": "ConditioningSetArea",
        "inputs": {"conditioning": ["2", 0], "width": 128, "height": 64, "x": 0, "y": 0, "strength": 1.0},
    }
    p["4"]["inputs"].update(width=512, height=64)  # the whole latent is above the limit, the area below
    p["23"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["22", 0]}}
    _add_chain(p, model, "20", f"area-{seed}", "img2img-1.0", "normal", "euler", seed)
    p[f"area-{seed}k"]["inputs"]["positive"] = ["23", 0]
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=300)
    msg = str(e.value)
    assert "ZeroDivisionError" not in msg
    assert "area conditioning makes the model sample a 128x64 px area" in msg and "264 px" in msg
