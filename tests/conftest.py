"""Shared pytest fixtures.

The ComfyUI end-to-end fixtures need ``.cache/ComfyUI`` (scripts/setup_env.sh).
Without it they skip, unless ``ECAD_REQUIRE_COMFY=1`` (CI), which turns the skip
into a failure.  The same applies to the browser (chromium + playwright-core).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
for _p in (str(REPO_ROOT), str(TESTS_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from support import reference  # noqa: E402

from comfy_harness import make_tiny  # noqa: E402  (stdlib only)
from comfy_harness.server import DEFAULT_COMFY_DIR, DEFAULT_PYTHON, ComfyServer  # noqa: E402

ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"


def _require_comfy() -> bool:
    return os.environ.get("ECAD_REQUIRE_COMFY", "").strip().lower() not in ("", "0", "false", "no")


def _missing(what: str) -> None:
    """Skip, or fail when ECAD_REQUIRE_COMFY is set."""
    msg = f"{what}: run `bash scripts/setup_env.sh`"
    if _require_comfy():
        pytest.fail(msg + " (ECAD_REQUIRE_COMFY is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(msg + " (set ECAD_REQUIRE_COMFY=1 to make this an error)")


# a test that needs these fixtures needs ComfyUI (server or in-process import) / chromium: marked so, wherever it is
COMFY_FIXTURES = {"comfy_dir", "comfy_models", "comfy_server"}
BROWSER_FIXTURES = {"browser_ready"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & COMFY_FIXTURES and not item.get_closest_marker("comfy"):
            item.add_marker(pytest.mark.comfy)
        if names & BROWSER_FIXTURES and not item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.browser)


def pytest_runtest_setup(item):
    if item.get_closest_marker("reference_missing"):
        reference.need()


@pytest.fixture(scope="session")
def ecad_reference() -> Path:
    """ECAD's reference files (tests/support/reference.py): skips without them, fails with ECAD_REQUIRE_REFERENCE=1."""
    return reference.need()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def comfy_dir() -> Path:
    if not (DEFAULT_COMFY_DIR / "main.py").is_file():
        _missing(f"ComfyUI is not installed in {DEFAULT_COMFY_DIR}")
    return DEFAULT_COMFY_DIR


@pytest.fixture(scope="session")
def comfy_models(comfy_dir) -> dict[str, Path]:
    """Tiny random checkpoints (built once, cached in .cache/tiny-models): name -> path."""
    return make_tiny.ensure_models(make_tiny.DEFAULT_MODELS_ROOT, comfy_dir=comfy_dir, python=str(DEFAULT_PYTHON))


@pytest.fixture(scope="session")
def comfy_server(comfy_dir, comfy_models):
    """A real ComfyUI on 127.0.0.1 with this repo's pack and the test support pack loaded.

    Set ECAD_KEEP_E2E=1 to keep its base dir (.cache/e2e-*, with server.log and outputs).
    """
    srv = ComfyServer(
        comfy_dir=comfy_dir,
        models_root=make_tiny.DEFAULT_MODELS_ROOT,
        ensure_models=False,
        keep_base_dir=bool(os.environ.get("ECAD_KEEP_E2E")),
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def browser_ready():
    from comfy_harness import browser

    parts = browser.browser_missing_parts()
    if parts:
        _missing("browser check unavailable, missing " + ", ".join(parts))
    return browser
