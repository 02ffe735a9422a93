"""Drive the real ComfyUI frontend in headless Debian chromium through playwright-core.

    res = load_workflow_in_browser(server.url, workflow_dict_or_path, screenshot="test-artifacts/x.png")
    res.missing            # node types the frontend could not find (sorted)
    res.raw                # everything browser_check.js reported

    # several workflows, one browser launch (~5-10 s saved per workflow on 2 cores):
    results = load_workflows_in_browser(server.url, [(wf1, "a.png"), (wf2, None)])

Needs ``/usr/bin/chromium`` (Debian package) and ``playwright-core`` in
``.cache/node`` (both installed by scripts/setup_env.sh); :func:`browser_available`
says whether they are there.  Stdlib only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SCRIPT = HERE / "browser_check.js"
NODE_MODULES = REPO_ROOT / ".cache" / "node" / "node_modules"
PLAYWRIGHT_CORE = NODE_MODULES / "playwright-core"
CHROMIUM = Path(os.environ.get("ECAD_CHROMIUM", "/usr/bin/chromium"))

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@dataclass
class BrowserResult:
    missing: list[str]
    frontend_version: str | None
    graph_node_count: int
    dialogs: list[str]  # open dialogs' text (v0.3.75's frontend reports missing nodes in one)
    page_errors: list[str]
    console_errors: list[str]
    screenshot: Path | None
    api_prompt: dict | None = None  # app.graphToPrompt().output when to_prompt=True
    probe: object = None  # the job's probe expression's value (JSON)
    raw: dict = field(default_factory=dict)
    toasts: list[str] = field(default_factory=list)  # toast messages' text (newer frontends' missing-node report)

    @property
    def notices(self) -> list[str]:
        """What the frontend told the user: dialogs and toasts (the missing-node report moved between them)."""
        return self.dialogs + self.toasts


def browser_missing_parts() -> list[str]:
    """What is missing to run the browser check (empty list: all there)."""
    out = []
    if not CHROMIUM.exists():
        out.append(f"{CHROMIUM} (apt-get install chromium)")
    if not (PLAYWRIGHT_CORE / "package.json").is_file():
        out.append(f"{PLAYWRIGHT_CORE} (npm install playwright-core)")
    if shutil.which("node") is None:
        out.append("node")
    return out


def browser_available() -> bool:
    return not browser_missing_parts()


FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,  # no templates dialog on first load
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
}


def prepare_frontend_settings(base_url: str, settings: dict | None = None) -> None:
    """POST /settings (stored in the server's user dir, read by the frontend at load)."""
    body = json.dumps(dict(FRONTEND_SETTINGS, **(settings or {}))).encode()
    req = urllib.request.Request(
        f"{base_url.rstrip('/')}/settings", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=10).read()


def load_workflows_in_browser(
    base_url: str,
    jobs,
    *,
    timeout: float = 120.0,
    width: int = 1400,
    height: int = 900,
    settle_ms: int = 1000,
    fit_view: bool = True,
    to_prompt: bool = False,
) -> list[BrowserResult]:
    """Load several UI workflows one after the other in ONE headless chromium session.

    ``jobs``: iterable of ``(workflow, screenshot_path_or_None[, to_prompt[, probe]])``; a workflow
    is a dict or a path to a UI workflow JSON.  Returns one :class:`BrowserResult` per job.

    Each workflow goes through ``app.loadGraphData(workflow)``.  ``missing`` is the
    union of what the frontend passes to its extensions' ``afterConfigureGraph``
    hook (the same list its "This workflow has missing nodes" dialog shows) and the
    workflow's node types absent from ``LiteGraph.registered_node_types``.
    ``fit_view`` drops the workflow's saved view (``extra.ds``) so that the frontend
    fits the whole graph into the screenshot.  ``to_prompt`` also returns the
    frontend's own API conversion (``app.graphToPrompt().output``) as ``api_prompt``.
    """
    missing_parts = browser_missing_parts()
    if missing_parts:
        raise RuntimeError("browser check unavailable, missing: " + ", ".join(missing_parts))
    prepare_frontend_settings(base_url)
    with tempfile.TemporaryDirectory(prefix="ecad-browser-") as tmp:
        tmp = Path(tmp)
        cfg_jobs = []
        for i, job in enumerate(jobs):
            workflow, screenshot = job[0], job[1]
            job_to_prompt = bool(job[2]) if len(job) > 2 else to_prompt
            probe = job[3] if len(job) > 3 else None  # a JS expression evaluated after loading
            if isinstance(workflow, (str, os.PathLike)):
                wf_path = Path(workflow).resolve()
            else:
                wf_path = tmp / f"workflow_{i}.json"
                wf_path.write_text(json.dumps(workflow))
            shot = None
            if screenshot is not None:
                shot = Path(screenshot).resolve()
                shot.parent.mkdir(parents=True, exist_ok=True)
            cfg_jobs.append(
                {
                    "workflow_path": str(wf_path),
                    "screenshot": str(shot) if shot else None,
                    "to_prompt": job_to_prompt,
                    "probe": probe,
                }
            )
        profile = tmp / "profile"
        profile.mkdir()
        cfg = {
            "url": base_url.rstrip("/") + "/",
            "jobs": cfg_jobs,
            "playwright_core": str(PLAYWRIGHT_CORE),
            "chromium": str(CHROMIUM),
            "user_data_dir": str(profile),  # a fresh profile every time
            "args": CHROMIUM_FLAGS,
            "timeout_ms": int(timeout * 1000 * 0.5),
            "width": width,
            "height": height,
            "settle_ms": settle_ms,
            "fit_view": fit_view,
        }
        cfg_path = tmp / "config.json"
        cfg_path.write_text(json.dumps(cfg))
        env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
        proc = subprocess.run(
            ["node", str(SCRIPT), str(cfg_path)], capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp)
        )
    raw = None
    for line in proc.stdout.splitlines():
        if line.startswith("ECAD_BROWSER_RESULT "):
            raw = json.loads(line[len("ECAD_BROWSER_RESULT ") :])
    if raw is None or "fatal" in raw or proc.returncode != 0:
        detail = (raw or {}).get("fatal") or ""
        raise RuntimeError(
            f"browser check failed (rc {proc.returncode}): {detail}\n"
            f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
        )
    results = []
    for one in raw["jobs"]:
        missing = sorted(set(one.get("unregistered_types") or []) | set(one.get("reported_missing") or []))
        results.append(
            BrowserResult(
                missing=missing,
                frontend_version=one.get("frontend_version"),
                graph_node_count=one.get("graph_node_count", 0),
                dialogs=one.get("dialogs") or [],
                toasts=one.get("toasts") or [],
                page_errors=one.get("page_errors") or [],
                console_errors=one.get("console_errors") or [],
                screenshot=Path(one["screenshot"]) if one.get("screenshot") else None,
                api_prompt=one.get("api_prompt"),
                probe=one.get("probe"),
                raw=dict(one, failed_requests=raw.get("failed_requests", [])),
            )
        )
    return results


def load_workflow_in_browser(base_url: str, workflow, screenshot=None, **kw) -> BrowserResult:
    """One workflow: see :func:`load_workflows_in_browser`."""
    return load_workflows_in_browser(base_url, [(workflow, screenshot)], **kw)[0]
