// comfyui-ecad frontend extension: the preset dropdown of "Apply ECAD Cache Schedule"
// lists only the schedules that fit the connected model.
//
// The browser knows only the loader's file name, so it asks the server
// (GET /ecad/presets, nodes/routes.py), which reads that file's safetensors header
// and counts blocks. The MODEL link is followed upstream through MODEL->MODEL
// nodes (LoRA loaders, ...) to the loader. Unknown sources list everything; the
// node's run-time check stays the authority, and a value already chosen is kept.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const APPLY = "ApplyECADSchedule";
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

window.__ecadPresetFilter = { refreshAll, modelSource };

app.registerExtension({
  name: "comfyui-ecad.presetFilter",
  async beforeRegisterNodeDef(nodeType, nodeData) {
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
  },
});
