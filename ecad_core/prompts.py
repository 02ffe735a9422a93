"""Prompts: prompt files (the search's and the evaluation's), the shipped prompt sets by name, caption files.

Shipped (``prompts/``, licences and attribution in ``prompts/README.md``):

* ``ecad-calibration``: ImageReward's 100 benchmark prompts, ECAD's search set;
* ``parti``: PartiPrompts (1,632; Apache-2.0, google-research/parti);
* ``drawbench``: DrawBench (200; clean-text copy from nousr/dream-bench, MIT).

Not shipped (no licence that allows it): COCO-30K and MJHQ-30K captions. Pass
their files with ``--prompts PATH``: besides the formats of ``load_prompts``
(.txt, .tsv, JSON list) ``load_eval_prompts`` reads MJHQ-30K's ``meta_data.json``
(``{id: {"prompt", "category"}}``) and COCO caption annotations (``{"annotations": [{"caption"}]}``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .errors import SearchSettingsError

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPTS_DIR_ENV = "ECAD_PROMPTS_DIR"
# the search's calibration sets: name -> candidate files (ECAD's: ImageReward's 100 benchmark prompts,
# [{"id", "prompt"}])
CALIBRATION_SETS = {
    "ecad-calibration": (
        "prompts/ImageRewardPrompts.json",
        "prompts/imagereward/ImageRewardPrompts.json",
        "data/prompts/ImageRewardPrompts.json",
    ),
}
SHIPPED = {"parti": "prompts/PartiPrompts.tsv", "drawbench": "prompts/drawbench.json"}
# every named set the evaluation takes
PROMPT_SETS = ("ecad-calibration", *SHIPPED)


def load_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompts from a .txt (one per line), .json (a list of strings or of {"prompt": ...} objects, as
    ECAD's ImageRewardPrompts.json) or .tsv (PartiPrompts: column "Prompt") file; blank lines skipped."""
    p = Path(path)
    if not p.is_file():
        raise SearchSettingsError(f"prompts file {p}: not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SearchSettingsError(f"prompts file {p}: cannot read as UTF-8 text ({e})") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SearchSettingsError(f"prompts file {p}: not valid JSON ({e})") from None
        if not isinstance(data, list):
            raise SearchSettingsError(f"prompts file {p}: expected a JSON list of prompts")
        prompts = []
        for i, item in enumerate(data):
            if isinstance(item, dict) and isinstance(item.get("prompt"), str):
                prompts.append(item["prompt"])
            elif isinstance(item, str):
                prompts.append(item)
            else:
                raise SearchSettingsError(
                    f"prompts file {p}: item {i} is neither a string nor an object with a 'prompt' string"
                )
    elif p.suffix.lower() == ".tsv":
        rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
        if not rows or "Prompt" not in rows[0]:
            raise SearchSettingsError(f"prompts file {p}: a .tsv needs a header row with a 'Prompt' column")
        col = rows[0].index("Prompt")
        prompts = [r[col] for r in rows[1:] if len(r) > col]
    else:
        prompts = text.splitlines()
    prompts = [s.strip() for s in prompts if s.strip()]
    if not prompts:
        raise SearchSettingsError(f"prompts file {p}: holds no prompts")
    if limit is not None:
        if limit < 1:
            raise SearchSettingsError(f"--num-prompts must be >= 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def prompt_set_path(name: str) -> Path:
    """The repository's copy of a named prompt set (or ``$ECAD_PROMPTS_DIR/<file name>``)."""
    if name not in CALIBRATION_SETS:
        raise SearchSettingsError(f"unknown prompt set {name!r}; known: {', '.join(CALIBRATION_SETS)}")
    rels = CALIBRATION_SETS[name]
    cands = []
    env = os.environ.get(PROMPTS_DIR_ENV)
    if env:
        cands.append(Path(env) / Path(rels[0]).name)
    cands += [REPO_ROOT / r for r in rels]
    for c in cands:
        if c.is_file():
            return c
    raise SearchSettingsError(
        f"prompt set {name!r}: none of {', '.join(str(c) for c in cands)} exists; "
        f"pass the file with --prompts PATH (ECAD used ImageRewardPrompts.json)"
    )


def eval_prompt_set_path(name: str) -> Path:
    """The file of a shipped prompt set."""
    if name == "ecad-calibration":
        return prompt_set_path(name)
    if name not in SHIPPED:
        raise ValueError(
            f"unknown prompt set {name!r}; known: {', '.join(PROMPT_SETS)} (COCO or MJHQ captions: "
            "pass the file with --prompts)"
        )
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
            raise ValueError(
                f"prompts file {p}: entry {key!r} has no 'prompt' string (expected MJHQ-30K's "
                "meta_data.json or COCO caption annotations)"
            )
        prompts.append(item["prompt"].strip())
    return [x for x in prompts if x]


def load_eval_prompts(
    path: str | Path | None = None, prompt_set: str | None = None, limit: int | None = None
) -> list[str]:
    """Prompts from a file or a shipped set (exactly one of them); the first ``limit`` when given."""
    if (path is None) == (prompt_set is None):
        raise ValueError("give either a prompts file or a prompt set name (exactly one)")
    if limit is not None and limit < 1:
        raise ValueError(f"the number of prompts must be >= 1, got {limit}")
    p = Path(path) if path is not None else eval_prompt_set_path(str(prompt_set))
    if p.suffix.lower() == ".json" and p.is_file():
        prompts = _caption_json(p)
        if prompts is not None:
            if not prompts:
                raise ValueError(f"prompts file {p}: holds no prompts")
            return prompts[:limit] if limit else prompts
    return load_prompts(p, limit)
