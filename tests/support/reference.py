"""ECAD's reference files (the paper's schedule files, data only), for the tests that compare against them.

One setting: ``ECAD_REFERENCE_DIR``, default ``../shared/ecad-reference`` beside the repository. When the
folder is missing those tests skip, saying so and how to get it; with ``ECAD_REQUIRE_REFERENCE=1`` (CI) the
absence is a failure. Parametrized tests never vanish: without the folder they get one placeholder case that
skips (or fails) in conftest's ``pytest_runtest_setup`` (its ``reference_missing`` mark).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = "ECAD_REFERENCE_DIR"
REQUIRE_ENV = "ECAD_REQUIRE_REFERENCE"
PLACEHOLDER = "reference-files-missing"


def reference_dir() -> Path:
    """The folder of ECAD's reference files (it may not exist)."""
    env = os.environ.get(ENV, "").strip()
    return Path(env).expanduser().resolve() if env else REPO.parent / "shared" / "ecad-reference"


REF_DIR = reference_dir()
SCHEDULES = REF_DIR / "schedules"
PAPER = SCHEDULES / "schedules_in_paper"


def available() -> bool:
    return SCHEDULES.is_dir()


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def missing_reason() -> str:
    return (
        f"ECAD's reference files are not at {REF_DIR} (no schedules/ folder): set {ENV} to the folder "
        "holding schedules/ and compact/ (a snapshot of the AniAggarwal/ecad repository's schedule files, see "
        "its README), or put it at ../shared/ecad-reference beside the repository"
    )


def need() -> Path:
    """The reference folder; skips the calling test when it is missing (fails when ECAD_REQUIRE_REFERENCE=1)."""
    if available():
        return REF_DIR
    if required():
        pytest.fail(missing_reason() + f" ({REQUIRE_ENV} is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(missing_reason())


def params(pattern: str, base: Path | None = None, id_of=None) -> list:
    """``pytest.param`` for every file matching ``pattern`` under ``base`` (default: the schedules folder), or one
    placeholder marked ``reference_missing`` (skipped or failed before it runs) when the files are missing."""
    base = SCHEDULES if base is None else base
    files = sorted(base.glob(pattern)) if available() else []
    if not files:
        return [pytest.param(None, id=PLACEHOLDER, marks=pytest.mark.reference_missing)]
    return [pytest.param(f, id=id_of(f) if id_of else str(f.relative_to(base))) for f in files]
