"""Options and inputs the pipeline-driving commands share (evolve, run, eval)."""

from __future__ import annotations

import argparse
import math

from ..errors import EcadError, SearchSettingsError
from ..prompts import CALIBRATION_SETS, load_prompts, prompt_set_path

SEED_RANGE = 2**64  # noise seeds of `run`/`eval --seeds`: what torch.Generator.manual_seed takes


def check_seeds(seeds, option: str = "--seeds") -> None:
    """Refuse a seed torch cannot take, before anything loads: torch gives a raw overflow error for a large
    one and wraps a small negative one silently."""
    bad = [s for s in seeds if not 0 <= s < SEED_RANGE]
    if bad:
        raise EcadError(f"{option}: {bad[0]} is out of range; a seed is an integer in 0..{SEED_RANGE - 1}")


def prompts_from_args(a, need: bool = True) -> list[str]:
    if getattr(a, "prompt", None):
        return list(a.prompt)
    if a.prompts and a.prompts_set:
        raise SearchSettingsError("give --prompts or --prompts-set, not both")
    if a.prompts:
        return load_prompts(a.prompts, a.num_prompts)
    if a.prompts_set:
        return load_prompts(prompt_set_path(a.prompts_set), a.num_prompts)
    if need:
        raise SearchSettingsError("no prompts: give --prompts FILE or --prompts-set ecad-calibration")
    return []


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s!r}")
    return v


def add_model_arg(q) -> None:
    q.add_argument(
        "--model",
        required=True,
        help="diffusers model folder or cached model id (local files only), or tiny:pixart-alpha, "
        "tiny:pixart-sigma, tiny:flux-dev, tiny:flux-schnell (built-in random weights)",
    )


def add_model_and_prompt_args(q) -> None:
    add_model_arg(q)
    q.add_argument(
        "--prompts",
        default=None,
        help="prompts file: .txt (one per line), .json (list of strings "
        'or ECAD\'s [{"id", "prompt"}]) or .tsv (column Prompt)',
    )
    q.add_argument(
        "--prompts-set",
        default=None,
        choices=sorted(CALIBRATION_SETS),
        help="a prompt set shipped with the repository (ecad-calibration: ImageReward's 100 prompts)",
    )
    q.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    add_sampling_args(q)


def add_sampling_args(q) -> None:
    """Options every pipeline-driving subcommand shares (evolve, run, eval)."""
    q.add_argument("--cfg", type=float, default=4.5, help="guidance scale (default 4.5)")
    q.add_argument("--height", type=int, default=256)
    q.add_argument("--width", type=int, default=256)
    q.add_argument("--batch-size", type=int, default=None, help="prompts per pipeline call (default: all)")
    q.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    q.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
