// comfyui-ecad frontend extension: the preset dropdown of "Apply ECAD Cache Schedule"
// lists only the schedules that fit the connected model; Apply and Load embed the text
// of the user's own schedule they name in the workflow (so a shared workflow runs
// where the file is missing); run statistics are shown as a toast.
//
// The browser knows only the loader's file name, so it asks the server
// (GET /ecad/presets, nodes/routes.py), which reads that file's safetensors header
// and counts blocks. The MODEL link is followed upstream through MODEL->MODEL
// nodes (LoRA loaders, ...) to the loader. Unknown sources list everything; the
// node's run-time check stays the authority, and a value already chosen is kept.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const APPLY = "ApplyECADSchedule";
const LOAD = "LoadECADSchedule";
const EMBED = "embedded_schedule";
// node type -> the widget naming the schedule whose text is embedded
const PRESET_WIDGETS = { [APPLY]: "preset", [LOAD]: "schedule_file" };
const FILE_WIDGETS = {
  UNETLoader: "unet_name",
  CheckpointLoaderSimple: "ckpt_name",
  CheckpointLoader: "ckpt_name",
  ImageOnlyCheckpointLoader: "ckpt_name",
};

function linkOf(graph, node, slot) {
  if (typeof node.getInputLink === "function") return node.getInputLink(slot);
  const id = node.inputs?.[slot]?.link;
  if (id == null) return null;
  return typeof graph.links?.get === "function" ? graph.links.get(id) : graph.links?.[id];
}

// The loader node and its file widget behind a node's MODEL input, or null.
function modelSource(node) {
  const graph = node.graph || app.graph;
  const seen = new Set();
  let cur = node;
  while (cur && !seen.has(cur.id)) {
    seen.add(cur.id);
    const slot = (cur.inputs || []).findIndex((i) => i.type === "MODEL");
    if (slot < 0) return null;
    const link = linkOf(graph, cur, slot);
    if (!link) return null;
    const up = graph.getNodeById(link.origin_id);
    if (!up) return null;
    const wname = FILE_WIDGETS[up.comfyClass || up.type];
    if (wname) {
      const widget = (up.widgets || []).find((w) => w.name === wname);
      return widget ? { node: up, widget } : null;
    }
    cur = up;
  }
  return null;
}

function watchLoader(src) {
  // re-filter when the user picks another model file in the loader
  if (src.widget.__ecadWatched) return;
  src.widget.__ecadWatched = true;
  const cb = src.widget.callback;
  src.widget.callback = function (...args) {
    const r = cb?.apply(this, args);
    refreshAll();
    return r;
  };
}

async function refresh(node) {
  const preset = (node.widgets || []).find((w) => w.name === "preset");
  if (!preset) return;
  const src = modelSource(node);
  let url = "/ecad/presets";
  if (src) {
    watchLoader(src);
    url += `?loader=${encodeURIComponent(src.node.comfyClass || src.node.type)}` +
      `&file=${encodeURIComponent(src.widget.value ?? "")}`;
  }
  let data;
  try {
    const res = await api.fetchApi(url);
    if (!res.ok) return;
    data = await res.json();
  } catch (e) {
    console.warn("comfyui-ecad: preset filter unavailable", e);
    return;
  }
  const values = [...data.options];
  if (preset.value != null && !values.includes(preset.value)) values.push(preset.value);
  preset.options.values = values;
  node.__ecadModel = data.model;
  node.setDirtyCanvas?.(true, true);
}

function applyNodes() {
  return (app.graph?.nodes || app.graph?._nodes || []).filter((n) => (n.comfyClass || n.type) === APPLY);
}

function refreshAll() {
  return Promise.all(applyNodes().map(refresh));
}

let timer = null;
function refreshSoon() {
  // links are restored after the nodes when a workflow loads: wait for the graph to settle
  clearTimeout(timer);
  timer = setTimeout(refreshAll, 50);
}

// -- embedded schedules -------------------------------------------------------------------
function widget(node, name) {
  return (node.widgets || []).find((w) => w.name === name);
}

function notify(severity, summary, detail) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity, summary, detail, life: severity === "error" ? 10000 : 6000 });
  else console.log(`comfyui-ecad: ${summary}: ${detail}`);
}

// The picked schedule's text into the hidden widget ("" for off and shipped presets).
async function embed(node) {
  const preset = widget(node, PRESET_WIDGETS[node.comfyClass || node.type]);
  const target = widget(node, EMBED);
  if (!preset || !target) return;
  const value = preset.value ?? "";
  try {
    const res = await api.fetchApi(`/ecad/schedule_text?preset=${encodeURIComponent(value)}`);
    const data = await res.json();
    if (preset.value !== value) return; // picked again meanwhile
    if (!res.ok) console.warn("comfyui-ecad: cannot embed", value, data.error);
    // a copy of another schedule must never stay under this name: no copy, the server says what is wrong
    target.value = res.ok ? data.text || "" : "";
  } catch (e) {
    console.warn("comfyui-ecad: cannot embed the schedule", e);
  }
  node.setDirtyCanvas?.(true, true);
}

function watchPreset(node) {
  const preset = widget(node, PRESET_WIDGETS[node.comfyClass || node.type]);
  if (!preset || preset.__ecadEmbeds) return;
  preset.__ecadEmbeds = true;
  const cb = preset.callback;
  preset.callback = function (...args) {
    const r = cb?.apply(this, args);
    embed(node);
    return r;
  };
}

// A workflow saved before embedding existed (or a new node): embed what it names. A copy already in the
// workflow is kept: it is what the workflow was made with, even where a local file of that name differs.
function embedMissing() {
  const nodes = app.graph?.nodes || app.graph?._nodes || [];
  return Promise.all(
    nodes
      .filter((n) => PRESET_WIDGETS[n.comfyClass || n.type])
      .map((n) => {
        watchPreset(n);
        return widget(n, EMBED) && !widget(n, EMBED).value ? embed(n) : null;
      }),
  );
}

async function saveEmbedded(node) {
  const preset = widget(node, PRESET_WIDGETS[node.comfyClass || node.type]);
  const text = widget(node, EMBED)?.value || "";
  const res = await api.fetchApi("/ecad/save_embedded", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ preset: preset?.value ?? "", text }),
  });
  const data = await res.json();
  if (!res.ok) notify("error", "ECAD: not saved", data.error);
  else notify(data.saved ? "success" : "warn", data.saved ? "ECAD: schedule saved" : "ECAD: not saved", data.message);
  return data;
}

// -- run statistics -------------------------------------------------------------------------
function showStats(event) {
  const d = event.detail || {};
  if (d.text) notify("info", "ECAD", d.text);
  window.__ecadLastStats = d;
}
api.addEventListener("ecad.stats", showStats);

window.__ecadPresetFilter = { refreshAll, modelSource };
window.__ecadEmbed = { embed, embedMissing, saveEmbedded };

let embedTimer = null;
function embedSoon() {
  clearTimeout(embedTimer);
  embedTimer = setTimeout(embedMissing, 50);
}

app.registerExtension({
  name: "comfyui-ecad.presetFilter",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PRESET_WIDGETS[nodeData.name]) return;
    const getExtraMenuOptions = nodeType.prototype.getExtraMenuOptions;
    nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
      const r = getExtraMenuOptions?.apply(this, [canvas, options]);
      if (widget(this, EMBED)?.value) {
        options.push({ content: "ECAD: save embedded schedule", callback: () => saveEmbedded(this) });
      }
      return r;
    };
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const r = onNodeCreated?.apply(this, args);
      // the embedded text is the pack's business: shown only by the node menu's "Show Advanced"
      const w = widget(this, EMBED);
      if (w) w.advanced = true;
      embedSoon();
      return r;
    };
    if (nodeData.name !== APPLY) return;
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const r = onConnectionsChange?.apply(this, args);
      refreshSoon();
      return r;
    };
    const onAdded = nodeType.prototype.onAdded;
    nodeType.prototype.onAdded = function (...args) {
      const r = onAdded?.apply(this, args);
      refreshSoon();
      return r;
    };
  },
  afterConfigureGraph() {
    refreshSoon();
    embedSoon();
  },
});
