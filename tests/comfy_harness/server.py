"""Start a real ComfyUI (v0.3.75 in .cache/ComfyUI) headless on the CPU and talk to it over HTTP.

Stdlib only at import time; ComfyUI runs in a child process with the repo's
``.venv`` python.  The server gets a private base directory (models dirs point at
the cached tiny models, outputs and user data stay in the base dir), loads this
repo as a custom node pack through ``<base>/custom_nodes/comfyui-ecad -> <repo>``
and the test-only support pack through the ``custom_nodes`` key of an
extra-model-paths yaml.

    with ComfyServer() as srv:
        pid = srv.queue(api_prompt)
        entry = srv.wait(pid)               # history entry, raises on execution_error

Also here: :func:`ui_to_api`, which converts a UI workflow (``nodes``/``links``/
``widgets_values``, as saved by the frontend) into the API prompt format, using
the server's ``/object_info`` to name the widget values.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

try:
    from . import make_tiny
except ImportError:  # loaded as a top-level module (folder on sys.path)
    import make_tiny

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_COMFY_DIR = make_tiny.DEFAULT_COMFY_DIR  # ECAD_COMFY_DIR, or .cache/ComfyUI
# ECAD_COMFY_PYTHON: the interpreter that runs that ComfyUI (default: the repo's .venv; ComfyUI 0.33 has its own
# venv, scripts/setup_env.sh)
DEFAULT_PYTHON = Path(os.environ.get("ECAD_COMFY_PYTHON") or REPO_ROOT / ".venv" / "bin" / "python")
SUPPORT_PACK_DIR = HERE / "support_pack"  # folder holding comfy_ecad_test_support/
REPO_PACK_NAME = "comfyui-ecad"


class ComfyError(RuntimeError):
    """Base class for errors reported by the harness."""


class PromptValidationError(ComfyError):
    """POST /prompt answered 400; ``.error`` and ``.node_errors`` hold the server's reply."""

    def __init__(self, error, node_errors):
        self.error = error
        self.node_errors = node_errors
        super().__init__(f"prompt rejected: {json.dumps(error)}\nnode_errors: {json.dumps(node_errors, indent=1)}")


class PromptExecutionError(ComfyError):
    """The prompt ran and failed; ``.details`` is the execution_error message (node_type, exception_message,
    traceback...)."""

    def __init__(self, prompt_id, details, entry):
        self.prompt_id = prompt_id
        self.details = details
        self.entry = entry
        tb = "".join(details.get("traceback") or []) if isinstance(details, dict) else ""
        if isinstance(details, dict):
            msg = (
                f"prompt {prompt_id} failed in node {details.get('node_id')} ({details.get('node_type')}): "
                f"{details.get('exception_type')}: {details.get('exception_message')}"
            )
        else:
            msg = f"prompt {prompt_id} failed: {details}"
        super().__init__(msg + ("\n" + tb if tb else ""))


def _die_with_parent():
    """In the child: get SIGTERM when the parent (e.g. pytest) dies, so no server is left behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux/glibc: the parent's cleanup still stops the server
        pass


def free_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server process on 127.0.0.1:<free port>.

    Parameters
    ----------
    base_dir: the ``--base-directory`` (created; default: a fresh ``.cache/e2e-*`` dir,
        removed by :meth:`stop` unless ``keep_base_dir``).
    models_root: folder with ``diffusion_models/`` and ``vae/`` (default: the tiny-model cache);
        ``ensure_models`` (default True) builds the tiny models there first.
    load_repo_pack: symlink this repo into ``<base>/custom_nodes/comfyui-ecad``.
    support_pack: load ``support_pack/`` (TestRandomConditioning) via the yaml.
    extra_args: more ComfyUI command line arguments (e.g. ``["--cache-none"]``).
    """

    def __init__(
        self,
        base_dir=None,
        *,
        comfy_dir=DEFAULT_COMFY_DIR,
        python=None,
        models_root=None,
        ensure_models=True,
        load_repo_pack=True,
        support_pack=True,
        extra_args=(),
        port=None,
        startup_timeout=180.0,
        keep_base_dir=False,
        env=None,
    ):
        self.comfy_dir = Path(comfy_dir).resolve()
        self.python = str(python or (DEFAULT_PYTHON if DEFAULT_PYTHON.exists() else sys.executable))
        self.models_root = Path(models_root or make_tiny.DEFAULT_MODELS_ROOT).resolve()
        self._ensure_models = ensure_models
        self.load_repo_pack = load_repo_pack
        self.support_pack = support_pack
        self.extra_args = list(extra_args)
        self.port = port
        self.startup_timeout = startup_timeout
        self.env = dict(env or {})
        self._own_base = base_dir is None
        self.keep_base_dir = keep_base_dir
        self.base_dir = Path(base_dir).resolve() if base_dir else None
        self.proc = None
        self.log_path = None
        self._log_file = None
        self.client_id = uuid.uuid4().hex
        self.startup_seconds = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    def _prepare_base(self):
        if self.base_dir is None:
            cache = REPO_ROOT / ".cache"
            cache.mkdir(exist_ok=True)
            self.base_dir = Path(tempfile.mkdtemp(prefix="e2e-", dir=cache))
        b = self.base_dir
        for d in ("custom_nodes", "input", "output", "temp", "user"):
            (b / d).mkdir(parents=True, exist_ok=True)  # --base-directory needs custom_nodes/
        link = b / "custom_nodes" / REPO_PACK_NAME
        if self.load_repo_pack and not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
        lines = ["ecad_e2e:", f"  base_path: {json.dumps(str(b))}"]
        lines += [
            f"  diffusion_models: {json.dumps(str(self.models_root / 'diffusion_models'))}",
            f"  unet: {json.dumps(str(self.models_root / 'diffusion_models'))}",
            f"  vae: {json.dumps(str(self.models_root / 'vae'))}",
        ]
        if self.support_pack:
            lines.append(f"  custom_nodes: {json.dumps(str(SUPPORT_PACK_DIR))}")
        self.yaml_path = b / "extra_model_paths.yaml"
        self.yaml_path.write_text("\n".join(lines) + "\n")

    def start(self):
        if self.proc is not None:
            return self
        if not (self.comfy_dir / "main.py").is_file():
            raise ComfyError(f"no ComfyUI at {self.comfy_dir}: run scripts/setup_env.sh")
        if self._ensure_models:
            make_tiny.ensure_models(self.models_root, comfy_dir=self.comfy_dir, python=self.python)
        self._prepare_base()
        if self.port is None:
            self.port = free_port()
        cmd = [
            self.python,
            str(self.comfy_dir / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--base-directory",
            str(self.base_dir),
            "--extra-model-paths-config",
            str(self.yaml_path),
            "--database-url",
            "sqlite:///:memory:",
            "--preview-method",
            "none",
            "--log-stdout",
            *self.extra_args,
        ]
        env = dict(os.environ)
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",
                "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES", ""),
            }
        )
        env.pop("PYTHONPATH", None)
        env.update(self.env)
        self.log_path = self.base_dir / "server.log"
        self._log_file = open(self.log_path, "wb")
        t0 = time.time()
        self.proc = subprocess.Popen(
            cmd,
            cwd=str(self.base_dir),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        atexit.register(self.stop)
        deadline = t0 + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                log = self.log_text()
                self._close()
                raise ComfyError(f"ComfyUI exited with {self.proc.returncode} during startup:\n{log[-8000:]}")
            try:
                with urllib.request.urlopen(self.url + "/object_info", timeout=30) as r:
                    if r.status == 200:
                        break
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                log = self.log_text()
                self.stop()
                raise ComfyError(f"ComfyUI did not answer /object_info within {self.startup_timeout}s:\n{log[-8000:]}")
            time.sleep(0.2)
        self.startup_seconds = time.time() - t0
        return self

    def _close(self):
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self, timeout=15.0):
        """Terminate the server (SIGTERM, then SIGKILL); remove an own base dir unless kept."""
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=timeout)
        self._close()
        if self._own_base and not self.keep_base_dir and self.base_dir is not None and self.base_dir.exists():
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    # ------------------------------------------------------------------ HTTP
    def _request(self, method, path, body=None, timeout=60.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"} if data else {}
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def get_json(self, path, timeout=60.0):
        return self._request("GET", path, timeout=timeout)

    def post_json(self, path, body, timeout=60.0):
        return self._request("POST", path, body, timeout=timeout)

    def object_info(self, node_class: str | None = None) -> dict:
        """All node definitions, or ``{node_class: def}`` for one (empty dict if unknown)."""
        if node_class is None:
            return self.get_json("/object_info")
        return self.get_json("/object_info/" + urllib.parse.quote(node_class, safe=""))

    def system_stats(self) -> dict:
        return self.get_json("/system_stats")

    def queue(self, prompt: dict, *, extra_data: dict | None = None, prompt_id: str | None = None) -> str:
        """POST /prompt; returns the prompt_id.  HTTP 400 -> :class:`PromptValidationError`."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        if prompt_id:
            body["prompt_id"] = prompt_id
        try:
            reply = self.post_json("/prompt", body)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                raise ComfyError(f"POST /prompt: HTTP {e.code}: {raw[:2000]!r}") from None
            if e.code == 400:
                raise PromptValidationError(payload.get("error"), payload.get("node_errors")) from None
            raise ComfyError(f"POST /prompt: HTTP {e.code}: {payload}") from None
        return reply["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict:
        """Poll /history/<id> until done; return the history entry or raise :class:`PromptExecutionError`."""
        deadline = time.time() + timeout
        while True:
            hist = self.get_json("/history/" + urllib.parse.quote(prompt_id, safe=""))
            entry = (hist or {}).get(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or (status and not status.get("completed", True)):
                    details = None
                    for name, data in status.get("messages", []):
                        if name in ("execution_error", "execution_interrupted"):
                            details = dict(data, event=name)
                    raise PromptExecutionError(prompt_id, details or status, entry)
                if status.get("completed") or status.get("status_str") == "success":
                    return entry
            if not self.alive():
                raise ComfyError(f"ComfyUI died while running {prompt_id}:\n{self.log_text()[-8000:]}")
            if time.time() > deadline:
                raise ComfyError(f"prompt {prompt_id} not done after {timeout}s; queue: {self.get_json('/queue')}")
            time.sleep(poll)

    def run(self, prompt: dict, timeout: float = 120.0, **kw) -> dict:
        """queue() + wait()."""
        return self.wait(self.queue(prompt, **kw), timeout=timeout)

    def run_ui_workflow(self, workflow: dict, timeout: float = 120.0, overrides=None) -> dict:
        """Convert a UI workflow (:func:`ui_to_api`), apply ``overrides`` and run it.

        ``overrides``: ``{class_type: {input: value}}`` applied with :func:`set_inputs`
        (e.g. swap real checkpoint names for the tiny ones).  The UI workflow goes
        along as ``extra_pnginfo`` as the frontend sends it.
        """
        prompt = self.ui_to_api(workflow)
        for class_type, values in (overrides or {}).items():
            set_inputs(prompt, class_type, **values)
        return self.run(prompt, timeout=timeout, extra_data={"extra_pnginfo": {"workflow": workflow}})

    def queue_idle(self) -> bool:
        q = self.get_json("/queue")
        return not q.get("queue_running") and not q.get("queue_pending")

    def free(self, unload_models: bool = True, free_memory: bool = True):
        """POST /free once the queue is idle: drops the output cache (and unloads models).

        ComfyUI's worker reads the flags only after a prompt or a wake-up, and a /free that
        arrives while it is busy after a prompt (its gc pass) wakes nothing: the flags then
        wait for the next prompt, which is served from the old cache. So a tiny probe prompt
        goes through the worker first; it reads the flags right after every prompt, before
        taking the next, so the cache is dropped once the probe is done.
        """
        deadline = time.time() + 60
        while not self.queue_idle() and time.time() < deadline:
            time.sleep(0.1)
        self.post_json("/free", {"unload_models": unload_models, "free_memory": free_memory})
        self.run(
            {
                "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}},
                "2": {
                    "class_type": "SaveLatent",
                    "inputs": {"samples": ["1", 0], "filename_prefix": "ecad_free_probe/probe"},
                },
            }
        )

    # ------------------------------------------------------------------ outputs
    def output_file(self, info: dict) -> Path:
        """Path of an output described as ``{"filename", "subfolder", "type"}``."""
        root = {"output": self.output_dir, "temp": self.base_dir / "temp", "input": self.input_dir}[
            info.get("type", "output")
        ]
        return root / info.get("subfolder", "") / info["filename"]

    def output_files(self, entry: dict, kind: str = "images") -> list[Path]:
        """Files named in a history entry's outputs under ``kind`` ("images", "latents", ...)."""
        out = []
        for node_out in (entry.get("outputs") or {}).values():
            for info in node_out.get(kind, []) or []:
                if isinstance(info, dict) and "filename" in info:
                    out.append(self.output_file(info))
        return out

    def ui_to_api(self, workflow: dict) -> dict:
        """Convert a UI workflow with this server's /object_info."""
        return ui_to_api(workflow, self.object_info())


# ====================================================================== UI -> API

# Widget types the stock frontend builds for a node input (ComfyWidgets); anything
# else (MODEL, LATENT, custom types...) is a socket.
_WIDGET_TYPES = {
    "INT",
    "FLOAT",
    "BOOLEAN",
    "STRING",
    "COMBO",
    "MARKDOWN",
    "IMAGEUPLOAD",
    "COLOR",
    "IMAGECOMPARE",
    "CHART",
}
_UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
# Frontend-only node types that never reach the API prompt.
_VIRTUAL_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4


def _input_specs(node_def: dict):
    """[(name, type, options)] in the order the frontend creates inputs (required, then optional)."""
    inputs = node_def.get("input", {}) or {}
    order = node_def.get("input_order") or {}
    out = []
    for section in ("required", "optional"):
        sec = inputs.get(section) or {}
        names = order.get(section) or list(sec)
        for name in names:
            if name not in sec:
                continue
            spec = sec[name]
            typ = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
            opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, typ, opts))
    return out


def _is_widget(typ, opts) -> bool:
    if opts.get("forceInput"):
        return False
    if isinstance(typ, list):
        return True
    return isinstance(typ, str) and typ in _WIDGET_TYPES


def _widget_layouts(node_def: dict):
    """Candidate layouts of ``widgets_values``: lists of (input name | None for padding).

    The frontend stores one value per widget, including widgets that are
    converted to inputs, plus:
    * after INT widgets with ``control_after_generate`` (default on for inputs
      named ``seed``/``noise_seed``): the "control after generate" value
      ("fixed"/"increment"/"decrement"/"randomize");
    * after COMBO widgets with ``control_after_generate``: that value and a filter string;
    * after combos with an upload flag (LoadImage...): the upload button's value.
    Older workflows may also hold values for ``forceInput`` inputs, or lack the
    control values; those layouts are tried when the first does not fit.
    """
    specs = _input_specs(node_def)
    main, no_upload, legacy, no_control = [], [], [], []
    for name, typ, opts in specs:
        if not _is_widget(typ, opts):
            if opts.get("forceInput") and isinstance(typ, str) and typ in _WIDGET_TYPES - {"COMBO"}:
                legacy.append(None)
                if opts.get("control_after_generate") or name in ("seed", "noise_seed"):
                    legacy.append(None)
            continue
        entry = [name]
        is_combo = isinstance(typ, list) or typ == "COMBO"
        if typ == "INT" and opts.get("control_after_generate", name in ("seed", "noise_seed")):
            entry.append(None)
        elif is_combo and opts.get("control_after_generate"):
            entry += [None, None]
        main += entry
        no_upload += entry
        legacy += entry
        no_control.append(name)
        if is_combo and any(opts.get(f) for f in _UPLOAD_FLAGS):
            main.append(None)
    layouts = [main]
    for cand in (no_upload, legacy, no_control):
        if cand not in layouts:
            layouts.append(cand)
    return layouts


def _map_widgets(node: dict, node_def: dict) -> dict:
    values = node.get("widgets_values")
    if values is None:
        return {}
    if isinstance(values, dict):  # some packs store a name -> value dict
        names = {n for n, t, o in _input_specs(node_def)}
        return {k: v for k, v in values.items() if k in names}
    layouts = _widget_layouts(node_def)
    for layout in layouts:
        if len(layout) == len(values):
            return {name: v for name, v in zip(layout, values) if name is not None}
    # saved before optional widgets were added at the end: the frontend gives those their defaults
    optional = set((node_def.get("input") or {}).get("optional") or {})
    for layout in layouts:
        if len(values) < len(layout) and all(n is None or n in optional for n in layout[len(values) :]):
            return {name: v for name, v in zip(layout, values) if name is not None}
    raise ValueError(
        f"node {node.get('id')} ({node.get('type')}): {len(values)} widgets_values {values!r} "
        f"match no widget layout {layouts!r}"
    )


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI workflow (frontend save format) into an API prompt.

    Handles widgets_values (incl. the seed widgets' control_after_generate value
    and widgets converted to inputs), muted (mode 2) and bypassed (mode 4) nodes,
    Reroute, PrimitiveNode and Note nodes.  Subgraphs are not supported.
    """
    if (workflow.get("definitions") or {}).get("subgraphs"):
        sub_ids = {s.get("id") for s in workflow["definitions"]["subgraphs"]}
        if any(n.get("type") in sub_ids for n in workflow.get("nodes", [])):
            raise NotImplementedError("ui_to_api: workflows with subgraphs are not supported")
    nodes = {int(n["id"]): n for n in workflow.get("nodes", [])}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):  # newer serialisation
            links[int(link["id"])] = (
                int(link["origin_id"]),
                int(link["origin_slot"]),
                int(link["target_id"]),
                int(link["target_slot"]),
                link.get("type"),
            )
        else:
            lid, o_id, o_slot, t_id, t_slot, typ = link[:6]
            links[int(lid)] = (int(o_id), int(o_slot), int(t_id), int(t_slot), typ)

    def upstream(link_id, depth=0):
        """Follow a link through Reroutes and bypassed nodes to ("link", node, slot) | ("value", v) | None."""
        if depth > 100:
            raise ValueError("link cycle through reroute/bypass nodes")
        if link_id is None or int(link_id) not in links:
            return None
        o_id, o_slot, _, _, ltype = links[int(link_id)]
        src = nodes.get(o_id)
        if src is None:
            return None
        stype, mode = src.get("type"), src.get("mode", MODE_ALWAYS)
        if stype == "Reroute":
            ins = src.get("inputs") or []
            return upstream(ins[0].get("link") if ins else None, depth + 1)
        if stype in ("PrimitiveNode",):
            wv = src.get("widgets_values") or []
            return ("value", wv[0]) if wv else None
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            # frontend: pass through the input of the same type, preferring the same slot index
            outs = src.get("outputs") or []
            otype = outs[o_slot].get("type") if o_slot < len(outs) else ltype
            ins = src.get("inputs") or []
            cands = [i for i, inp in enumerate(ins) if inp.get("type") == otype and inp.get("link") is not None]
            if o_slot in cands:
                cands = [o_slot] + [c for c in cands if c != o_slot]
            for c in cands:
                r = upstream(ins[c]["link"], depth + 1)
                if r is not None:
                    return r
            return None
        return ("link", str(o_id), o_slot)

    prompt = {}
    for nid, node in sorted(nodes.items()):
        ntype, mode = node.get("type"), node.get("mode", MODE_ALWAYS)
        if ntype in _VIRTUAL_TYPES or mode in (MODE_NEVER, MODE_BYPASS):
            continue
        node_def = object_info.get(ntype)
        if node_def is None:
            raise KeyError(f"node {nid}: type {ntype!r} is not known to the server (missing custom node?)")
        inputs = _map_widgets(node, node_def)
        for inp in node.get("inputs") or []:
            name = (inp.get("widget") or {}).get("name") or inp.get("name")
            r = upstream(inp.get("link"))
            if r is None:
                continue
            if r[0] == "value":
                inputs[name] = r[1]
            else:
                inputs[name] = [r[1], r[2]]
        title = node.get("title") or node_def.get("display_name") or ntype
        prompt[str(nid)] = {"class_type": ntype, "inputs": inputs, "_meta": {"title": title}}
    return prompt


def set_inputs(prompt: dict, class_type: str, **values) -> int:
    """Set literal inputs on every node of ``class_type`` in an API prompt; returns how many nodes."""
    n = 0
    for node in prompt.values():
        if node.get("class_type") == class_type:
            node.setdefault("inputs", {}).update(values)
            n += 1
    return n


def load_workflow(path: os.PathLike | str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
