"""Prompt sets for evaluation: the shipped ones by name, and caption files the user gives.

Shipped (``prompts/``, licences and attribution in ``prompts/README.md``):

* ``ecad-calibration``: ImageReward's 100 benchmark prompts, ECAD's search set;
* ``parti``: PartiPrompts (1,632; Apache-2.0, google-research/parti);
* ``drawbench``: DrawBench (200; clean-text copy from nousr/dream-bench, MIT).

Not shipped (no licence that allows it): COCO-30K and MJHQ-30K captions. Pass
their files with ``--prompts PATH``: besides the formats of
``ecad_core.search.cli_commands.load_prompts`` (.txt, .tsv, JSON list) this
reads MJHQ-30K's ``meta_data.json`` (``{id: {"prompt", "category"}}``) and COCO
caption annotations (``{"annotations": [{"caption"}]}``).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..search.cli_commands import REPO_ROOT, load_prompts, prompt_set_path

SHIPPED = {"parti": "prompts/PartiPrompts.tsv", "drawbench": "prompts/drawbench.json"}
PROMPT_SETS = ("ecad-calibration", *SHIPPED)


def eval_prompt_set_path(name: str) -> Path:
    """The file of a shipped prompt set."""
    if name == "ecad-calibration":
        return prompt_set_path(name)
    if name not in SHIPPED:
        raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(PROMPT_SETS)} (COCO or MJHQ captions: "
                         "pass the file with --prompts)")
    p = REPO_ROOT / SHIPPED[name]
    if not p.is_file():
        raise ValueError(f"prompt set {name!r}: {p} is missing from this installation")
    return p


def _caption_json(p: Path) -> list[str] | None:
    """Prompts of an MJHQ meta_data.json or a COCO captions file; None for other JSON (a list)."""
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"prompts file {p}: cannot read as JSON ({e})") from None
    if isinstance(data, list):
        return None
    if not isinstance(data, dict):
        raise ValueError(f"prompts file {p}: expected a JSON list or object of prompts")
    if isinstance(data.get("annotations"), list):  # COCO captions_*.json
        caps = [a.get("caption") for a in data["annotations"] if isinstance(a, dict)]
        return [c.strip() for c in caps if isinstance(c, str) and c.strip()]
    prompts = []
    for key, item in data.items():  # MJHQ-30K meta_data.json
        if not (isinstance(item, dict) and isinstance(item.get("prompt"), str)):
            raise ValueError(f"prompts file {p}: entry {key!r} has no 'prompt' string (expected MJHQ-30K's "
                             "meta_data.json or COCO caption annotations)")
        prompts.append(item["prompt"].strip())
    return [x for x in prompts if x]


def load_eval_prompts(path: str | Path | None = None, prompt_set: str | None = None,
                      limit: int | None = None) -> list[str]:
    """Prompts from a file or a shipped set (exactly one of them); the first ``limit`` when given."""
    if (path is None) == (prompt_set is None):
        raise ValueError("give either a prompts file or a prompt set name (exactly one)")
    if limit is not None and limit < 1:
        raise ValueError(f"the number of prompts must be >= 1, got {limit}")
    p = Path(path) if path is not None else eval_prompt_set_path(prompt_set)
    if p.suffix.lower() == ".json" and p.is_file():
        prompts = _caption_json(p)
        if prompts is not None:
            if not prompts:
                raise ValueError(f"prompts file {p}: holds no prompts")
            return prompts[:limit] if limit else prompts
    return load_prompts(p, limit)
