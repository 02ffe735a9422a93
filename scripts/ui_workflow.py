"""The saved-workflow (UI format) graph the example-workflow scripts write: nodes, their links and groups, laid out
as the ComfyUI frontend stores them. Used by make_evolve_workflow.py and make_video_workflows.py."""

from __future__ import annotations

import uuid

# inputs the frontend marks optional (shape 7) on the pack's nodes
OPTIONAL_INPUTS = {"clip", "positive", "negative", "vae", "warm_start", "schedule"}
GROUP_COLORS = ("#3f789e", "#8A8")


def ui_workflow(name: str, nodes_spec, groups) -> dict:
    """``nodes_spec``: (id, type, pos, size, widgets_values, inputs [(name, type, link)], outputs
    [(name, type, [links])], title or None) per node, in execution order; ``groups``: (title, bounding) pairs.
    The workflow id is derived from ``name``, so regenerating a file gives the same bytes."""
    nodes, links = [], {}
    for order, (nid, ntype, pos, size, widgets, inputs, outputs, title) in enumerate(nodes_spec):
        node = {
            "id": nid,
            "type": ntype,
            "pos": pos,
            "size": size,
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [],
            "outputs": [],
            "properties": {"Node name for S&R": ntype},
            "widgets_values": widgets,
        }
        if title:
            node["title"] = title
        for slot, (iname, typ, link) in enumerate(inputs):
            inp = {"name": iname, "type": typ, "link": link}
            if iname in OPTIONAL_INPUTS and ntype in ("EvolveECADSchedule", "ApplyECADSchedule"):
                inp["shape"] = 7  # the frontend's marker for an optional socket
            node["inputs"].append(inp)
            if link is not None:
                links.setdefault(link, {})["to"] = (nid, slot, typ)
        for slot, (oname, typ, out_links) in enumerate(outputs):
            node["outputs"].append({"name": oname, "type": typ, "links": out_links, "slot_index": slot})
            for link in out_links:
                links.setdefault(link, {})["from"] = (nid, slot)
        nodes.append(node)
    rows = []
    for lid in sorted(links):
        (fn, fs), (tn, ts, typ) = links[lid]["from"], links[lid]["to"]
        rows.append([lid, fn, fs, tn, ts, typ])
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-ecad/" + name)),
        "revision": 0,
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": max(links),
        "nodes": nodes,
        "links": rows,
        "groups": [
            {"id": i + 1, "title": t, "bounding": b, "color": GROUP_COLORS[i % 2], "font_size": 24, "flags": {}}
            for i, (t, b) in enumerate(groups)
        ],
        "config": {},
        "extra": {"ds": {"scale": 0.6, "offset": [40, 60]}, "frontendVersion": "1.32.9"},
        "version": 0.4,
    }
