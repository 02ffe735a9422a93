"""Apply ECAD Cache Schedule in a real ComfyUI v0.3.75 server (tiny stock-detected checkpoints)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from test_comfy_harness import _read_latent, ksampler_prompt

from comfy_harness.server import PromptExecutionError
from ecad_core import Schedule, make_layout

pytestmark = pytest.mark.comfy
_seeds = itertools.count(5000)
STEPS = 4
# tiny checkpoints: PixArt depth 2; FLUX 1 double + 1 single block (make_tiny)
LAYOUTS = {
    "ecad_tiny_pixart_alpha": make_layout("pixart", 2),
    "ecad_tiny_pixart_sigma": make_layout("pixart", 2),
    "ecad_tiny_flux_dev": make_layout("flux", 1, 1),
    "ecad_tiny_flux_schnell": make_layout("flux", 1, 1),
    "ecad_tiny_sd3": make_layout("sd3", 1, 1),  # one joint block + the last (pre-only) one
    "ecad_tiny_wan": make_layout("wan", 2),
}


@pytest.fixture(scope="module")
def user_schedules(comfy_server):
    d = comfy_server.base_dir / "models" / "ecad_schedules"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for model, lay in LAYOUTS.items():
        Schedule.full(lay, STEPS, name=f"{model}-full", model=None).save(d / f"{model}-full.json")
        bits = rng.random((STEPS, lay.n_units)) < 0.4
        Schedule(lay, bits, name=f"{model}-mixed").save(d / f"{model}-mixed.json")
    return d


def _prompt(model, preset, seed, sampler="euler", denoise=1.0, prefix="ecad", **apply_inputs):
    p = ksampler_prompt(model, prefix, seed)
    p["5"]["inputs"].update(steps=STEPS, sampler_name=sampler, denoise=denoise)
    for k in ("7", "8", "9"):  # latents are enough here
        p.pop(k)
    if preset is not None:
        p["20"] = {
            "class_type": "ApplyECADSchedule",
            "inputs": {"model": ["1", 0], "preset": preset, "offload_cache_to_cpu": False, **apply_inputs},
        }
        p["5"]["inputs"]["model"] = ["20", 0]
    return p


def _latent(srv, prompt):
    entry = srv.run(prompt, timeout=300)
    return _read_latent(srv.output_files(entry, "latents")[0])


def _last_stats(srv):
    lines = re.findall(
        r"ECAD (\S+): (\d+)/(\d+) unit calls reused.*?over (\d+) steps, (\d+) model calls(.*)", srv.log_text()
    )
    assert lines, "no ECAD statistics in the server log"
    name, reused, total, steps, calls, rest = lines[-1]
    return {
        "name": name,
        "reused": int(reused),
        "total": int(total),
        "steps": int(steps),
        "calls": int(calls),
        "rest": rest,
    }


def test_nodes_are_registered(comfy_server, user_schedules):
    info = comfy_server.object_info()
    for n in ("ApplyECADSchedule", "LoadECADSchedule", "PreviewECADSchedule"):
        assert n in info, f"{n} missing: pack import failed?\n{comfy_server.log_text()[-3000:]}"
    opts = info["ApplyECADSchedule"]["input"]["required"]["preset"][0]
    assert "off" in opts
    assert any(o.startswith("pixart-alpha-256-fast · PixArt-α · 1.97×") for o in opts), opts[:5]
    assert any(o.startswith("user/ecad_tiny_flux_dev-mixed") for o in opts), "user folder not listed"


@pytest.mark.slow
@pytest.mark.parametrize("model", list(LAYOUTS))
def test_all_recompute_equals_unpatched_and_reuse_skips(comfy_server, user_schedules, model):
    srv = comfy_server
    seed = next(_seeds)
    ref = _latent(srv, _prompt(model, None, seed, prefix=f"{model}_ref"))
    full = _latent(srv, _prompt(model, f"user/{model}-full", seed, prefix=f"{model}_full"))
    st = _last_stats(srv)
    assert st["reused"] == 0 and st["steps"] == STEPS
    assert (full == ref).all(), "all-recompute schedule changed the image"
    mixed = _latent(srv, _prompt(model, f"user/{model}-mixed", seed, prefix=f"{model}_mixed"))
    st = _last_stats(srv)
    assert st["reused"] > 0 and st["name"] == f"{model}-mixed"
    assert np.isfinite(mixed.numpy()).all()
    assert not (mixed == ref).all()
    # a second run of the same workflow gives the same image (state reset per run)
    srv.free()
    again = _latent(srv, _prompt(model, f"user/{model}-mixed", seed, prefix=f"{model}_mixed2"))
    assert (again == mixed).all()
    assert _last_stats(srv)["reused"] == st["reused"]


def test_cuda_graphs_option_falls_back_with_the_reason_and_the_same_image(comfy_server, user_schedules):
    # No GPU here: the option must leave the image exactly as the eager engine makes it and say why in the
    # log (the captured path itself is checked on a GPU by bench_comfy --graphs: bit-identical to eager).
    srv = comfy_server
    for model, why in (
        ("ecad_tiny_pixart_alpha", "CUDA graphs off: CUDA graphs need a CUDA device"),
        ("ecad_tiny_flux_dev", "CUDA graphs: not offered for ComfyUI FLUX"),
    ):
        seed = next(_seeds)
        eager = _latent(srv, _prompt(model, f"user/{model}-mixed", seed, prefix=f"{model}_eager"))
        graphs = _latent(srv, _prompt(model, f"user/{model}-mixed", seed, prefix=f"{model}_graphs", cuda_graphs=True))
        assert (graphs == eager).all()
        assert why in srv.log_text()
        assert "CUDA graphs off" in _last_stats(srv)["rest"]
    p = _prompt(
        "ecad_tiny_pixart_alpha", "user/ecad_tiny_pixart_alpha-mixed", next(_seeds), prefix="g_off", cuda_graphs=True
    )
    p["20"]["inputs"]["offload_cache_to_cpu"] = True
    with pytest.raises(PromptExecutionError, match="CUDA graphs and offloading"):
        srv.run(p, timeout=120)


def test_wrong_family_schedule_is_a_clear_node_error(comfy_server, user_schedules):
    p = _prompt("ecad_tiny_pixart_alpha", "flux-dev-256-fast", next(_seeds), prefix="wrong")
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=120)
    assert "flux-dev-256-fast" in str(e.value) and "pixart" in str(e.value)


def test_heun_and_denoise_and_step_remap(comfy_server, user_schedules):
    srv = comfy_server
    model = "ecad_tiny_pixart_sigma"
    _latent(srv, _prompt(model, f"user/{model}-mixed", next(_seeds), sampler="heun", prefix="heun"))
    st = _last_stats(srv)
    # Heun evaluates twice per step except the last: calls > steps, steps still 4
    assert st["steps"] == STEPS and st["calls"] > STEPS and st["reused"] > 0
    p = _prompt(model, f"user/{model}-mixed", next(_seeds), denoise=0.5, prefix="denoise")
    _latent(srv, p)
    assert "remapped" in _last_stats(srv)["rest"]
    p = _prompt(model, f"user/{model}-mixed", next(_seeds), prefix="steps7")
    p["5"]["inputs"]["steps"] = 7
    _latent(srv, p)
    st = _last_stats(srv)
    assert st["steps"] == 7 and "remapped from 4" in st["rest"]


def test_two_samplers_in_one_workflow(comfy_server, user_schedules):
    """A hires-fix-like chain: sampler B refines sampler A's latent; both run the same patched MODEL."""
    srv = comfy_server
    model = "ecad_tiny_pixart_alpha"
    seed = next(_seeds)
    single = _latent(srv, _prompt(model, f"user/{model}-mixed", seed, prefix="single"))
    srv.free()  # drops ComfyUI's output cache: sampler A must really run again
    n_before = len(re.findall(r"unit calls reused", srv.log_text()))
    p = _prompt(model, f"user/{model}-mixed", seed, prefix="two_a")
    p["40"] = {
        "class_type": "KSampler",
        "inputs": dict(p["5"]["inputs"], latent_image=["5", 0], denoise=0.5, seed=seed + 1),
    }
    p["41"] = {"class_type": "SaveLatent", "inputs": {"samples": ["40", 0], "filename_prefix": "latents/two_b"}}
    entry = srv.run(p, timeout=300)
    files = srv.output_files(entry, "latents")
    first = _read_latent(next(f for f in files if f.name.startswith("two_a")))
    second = _read_latent(next(f for f in files if f.name.startswith("two_b")))
    # sampler A is unaffected by sampler B sharing the model (state is per run)
    assert (first == single).all()
    assert np.isfinite(second.numpy()).all() and not (second == first).all()
    runs = re.findall(
        r"ECAD (\S+): (\d+)/(\d+) unit calls reused.*?over (\d+) steps, (\d+) model calls(.*)", srv.log_text()
    )[n_before:]
    assert len(runs) == 2, runs
    assert int(runs[0][1]) > 0 and int(runs[0][3]) == STEPS and "remapped" not in runs[0][5]
    # B runs the second half of the schedule's time axis: denoise 0.5 is remapped and says so
    assert "remapped" in runs[1][5] and int(runs[1][1]) > 0


def test_pixart_256_checkpoint_is_refused_not_cached_into_a_black_image(comfy_server, user_schedules):
    """A stored 256 px pos_embed makes ComfyUI v0.3.75 divide by zero in PixArt's positional embedding."""
    srv = comfy_server
    model = "ecad_tiny_pixart_256pe"
    nan = _latent(srv, _prompt(model, None, next(_seeds), prefix="pe256_ref"))
    assert not np.isfinite(nan.numpy()).any(), "ComfyUI's PixArt no longer yields NaN here: revisit the refusal"
    p = _prompt(model, "user/ecad_tiny_pixart_alpha-mixed", next(_seeds), prefix="pe256")
    with pytest.raises(PromptExecutionError) as e:
        srv.run(p, timeout=120)
    assert "pe_interpolation 0" in str(e.value) and "512 px" in str(e.value)


def test_pixart_too_small_for_comfyui_is_a_clear_error(comfy_server, user_schedules):
    p = _prompt("ecad_tiny_pixart_alpha", "user/ecad_tiny_pixart_alpha-mixed", next(_seeds), prefix="small")
    p["4"]["inputs"].update(width=256, height=256)
    with pytest.raises(PromptExecutionError) as e:
        comfy_server.run(p, timeout=120)
    assert "cannot sample 256x256" in str(e.value) and ">= 264 px" in str(e.value)


def test_pixart_at_320_px_runs_stock_and_with_ecad(comfy_server, user_schedules):
    # the real limit is (W + H) / 2 >= 264 px (ComfyUI's round(((H + W) // 2) / 64) in latent pixels), not 384
    srv = comfy_server
    seed = next(_seeds)
    latents = []
    for preset in (None, "user/ecad_tiny_pixart_alpha-mixed"):
        p = _prompt("ecad_tiny_pixart_alpha", preset, seed, prefix=f"px320_{preset is None}")
        p["4"]["inputs"].update(width=320, height=320)
        latents.append(_latent(srv, p))
    assert all(x.shape[-2:] == (40, 40) and np.isfinite(x.numpy()).all() for x in latents)
    assert _last_stats(srv)["reused"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ecad_tiny_pixart_alpha", "ecad_tiny_flux_dev"])
def test_torch_compile_model_node_with_ecad_compiles_once_and_still_caches(comfy_server, user_schedules, model):
    # ComfyUI's TorchCompileModel before the Apply node: the cache's per-step decisions must stay out of the
    # compiled graphs (else torch.compile recompiles at every step and block until its recompile limit), and
    # caching must still happen, with the same image up to the compiled parts' rounding.
    srv = comfy_server
    seed = next(_seeds)
    eager = _latent(srv, _prompt(model, f"user/{model}-mixed", seed, prefix=f"{model}_nocompile"))
    reused = _last_stats(srv)["reused"]
    p = _prompt(model, f"user/{model}-mixed", seed, prefix=f"{model}_compiled")
    p["21"] = {"class_type": "TorchCompileModel", "inputs": {"model": ["1", 0], "backend": "inductor"}}
    p["20"]["inputs"]["model"] = ["21", 0]
    log_start = len(srv.log_text())
    compiled = _latent(srv, p)
    log = srv.log_text()[log_start:]
    assert _last_stats(srv)["reused"] == reused > 0
    assert "ECAD: this model is compiled" in srv.log_text()  # logged once per process
    assert "recompile_limit" not in log and "cache_size_limit" not in log, log[-3000:]
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), rtol=1e-3, atol=1e-3)
