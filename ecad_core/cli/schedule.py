"""``python -m ecad_core info | convert | macs``: schedule files (no torch is imported)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import EcadError, ScheduleError
from ..schedule import check_plain_json, is_ecad_dict, load_schedule, read_json_file, to_ecad_dict


def cmd_info(a) -> int:
    s = load_schedule(a.file)
    info = s.summary()
    info["file"] = str(a.file)
    ecad = s.provenance.get("ecad", {}) if isinstance(s.provenance, dict) else {}
    if (
        isinstance(ecad, dict)
        and ecad.get("num_inference_steps") not in (None, s.steps)
        and "num_inference_steps" in ecad
    ):
        info["note"] = (
            f"the file declares num_inference_steps={ecad['num_inference_steps']} "
            f"but stores {s.steps} steps; the stored steps are used"
        )
    if isinstance(ecad, dict) and ecad.get("block_extras"):
        info["note_extras"] = (
            "per-block extras "
            + ", ".join(ecad["block_extras"])
            + " are kept for export but not run by this engine (bits only)"
        )
    for key in ("total_macs_T",):
        if key in s.metrics:
            info["measured_" + key] = s.metrics[key]
    print(json.dumps(info, indent=2))
    return 0


def cmd_convert(a) -> int:
    raw = read_json_file(a.input)
    s = load_schedule(a.input)
    target = a.to or ("project" if is_ecad_dict(raw) else "ecad")
    out = Path(a.output)
    if out.exists() and out.resolve() == Path(a.input).resolve():
        raise EcadError(f"{a.output}: output would overwrite the input")
    if target == "ecad":
        d = to_ecad_dict(s)
        # never write what the reader refuses (Infinity, NaN, ...): fail before touching the output
        check_plain_json(d, lambda msg: ScheduleError(str(a.input), f"cannot be converted: {msg}"))
        text = json.dumps(d, indent=4, allow_nan=False) + "\n"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    else:
        s.save(out)
    print(f"wrote {out} ({target} format, {s.steps} steps, {s.layout.describe()})")
    return 0


def cmd_macs(a) -> int:
    from .. import costs

    s = load_schedule(a.file)
    arch = costs.get_arch(a.model)
    s.check_fits(arch.layout(), a.model)
    b = costs.cost_breakdown(
        s, arch, a.height, a.width, batch=a.cfg_batch or costs.DEFAULT_BATCH, text_tokens=a.text_tokens, mode=a.mode
    )
    report = {
        "file": str(a.file),
        "model": b["arch"],
        "mode": b["mode"],
        "height": b["height"],
        "width": b["width"],
        "batch": b["batch"],
        "text_tokens": b["text_tokens"],
        "steps": b["steps"],
        "total_TMACs": round(b["total_macs"] / 1e12, 4),
        "no_cache_TMACs": round(b["no_cache_macs"] / 1e12, 4),
        "speedup_vs_no_cache": round(b["expected_speedup"], 4),
        "fraction_of_full": round(b["fraction_of_full"], 6),
    }
    print(json.dumps(report, indent=2))
    return 0


def _cost_models() -> list[str]:
    """The variants the cost model knows (``ecad_core.families``), for the help text."""
    from .. import families

    return sorted(v.name for _, v in families.variants() if v.arch)


def register(sub) -> None:
    """Add ``info``, ``convert`` and ``macs`` to ``python -m ecad_core``'s subparsers."""
    q = sub.add_parser("info", help="print a schedule's family, steps, blocks, units and recompute fraction")
    q.add_argument("file")
    q.set_defaults(fn=cmd_info)

    q = sub.add_parser("convert", help="convert between ECAD's reference format and the project format")
    q.add_argument("input")
    q.add_argument("output")
    q.add_argument("--to", choices=["project", "ecad"], default=None, help="output format (default: the other one)")
    q.set_defaults(fn=cmd_convert)

    q = sub.add_parser("macs", help="total TMACs of a schedule and its speedup over no cache")
    q.add_argument("file")
    q.add_argument("--model", required=True, help=f"one of {', '.join(_cost_models())}")
    q.add_argument("--height", type=int, required=True)
    q.add_argument("--width", type=int, required=True)
    q.add_argument(
        "--cfg-batch", type=int, default=None, help="batch per model call (default: 2 = CFG batch, as ECAD measured)"
    )
    q.add_argument("--text-tokens", type=int, default=None, help="text length (default: the model's)")
    q.add_argument(
        "--mode",
        choices=["ecad", "full"],
        default="ecad",
        help="ecad: linear layers only, as ECAD measured; full: with attention products",
    )
    q.set_defaults(fn=cmd_macs)
