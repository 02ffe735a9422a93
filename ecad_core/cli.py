"""Command line: ``python -m ecad_core {info,convert,macs,demo} ...``.

Bad input exits with status 2 and one line on stderr that says what is wrong.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import EcadError


def _cmd_info(a) -> int:
    from .schedule import load_schedule

    s = load_schedule(a.file)
    info = s.summary()
    info["file"] = str(a.file)
    ecad = s.provenance.get("ecad", {}) if isinstance(s.provenance, dict) else {}
    if isinstance(ecad, dict) and ecad.get("num_inference_steps") not in (None, s.steps) \
            and "num_inference_steps" in ecad:
        info["note"] = (f"the file declares num_inference_steps={ecad['num_inference_steps']} "
                        f"but stores {s.steps} steps; the stored steps are used")
    if isinstance(ecad, dict) and ecad.get("block_extras"):
        info["note_extras"] = ("per-block extras " + ", ".join(ecad["block_extras"]) +
                               " are kept for export but not run by this engine (bits only)")
    for key in ("total_macs_T",):
        if key in s.metrics:
            info["measured_" + key] = s.metrics[key]
    print(json.dumps(info, indent=2))
    return 0


def _cmd_convert(a) -> int:
    from .ecad_format import is_ecad_dict, to_ecad_dict
    from .errors import ScheduleError
    from .schedule import check_plain_json, load_schedule, read_json_file

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


def _cmd_macs(a) -> int:
    from . import costs
    from .schedule import load_schedule

    s = load_schedule(a.file)
    arch = costs.get_arch(a.model)
    s.check_fits(arch.layout(), a.model)
    b = costs.cost_breakdown(s, arch, a.height, a.width, batch=a.cfg_batch or costs.DEFAULT_BATCH,
                             text_tokens=a.text_tokens, mode=a.mode)
    report = {"file": str(a.file), "model": b["arch"], "mode": b["mode"], "height": b["height"],
              "width": b["width"], "batch": b["batch"], "text_tokens": b["text_tokens"], "steps": b["steps"],
              "total_TMACs": round(b["total_macs"] / 1e12, 4),
              "no_cache_TMACs": round(b["no_cache_macs"] / 1e12, 4),
              "speedup_vs_no_cache": round(b["expected_speedup"], 4),
              "fraction_of_full": round(b["fraction_of_full"], 6)}
    print(json.dumps(report, indent=2))
    return 0


def _cmd_demo(a) -> int:
    from .demo import run_demo

    return run_demo(steps=a.steps, repeats=a.repeats, out_dir=a.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ecad_core", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("info", help="print a schedule's family, steps, blocks, units and recompute fraction")
    q.add_argument("file")
    q.set_defaults(fn=_cmd_info)

    q = sub.add_parser("convert", help="convert between ECAD's reference format and the project format")
    q.add_argument("input")
    q.add_argument("output")
    q.add_argument("--to", choices=["project", "ecad"], default=None,
                   help="output format (default: the other one)")
    q.set_defaults(fn=_cmd_convert)

    q = sub.add_parser("macs", help="total TMACs of a schedule and its speedup over no cache")
    q.add_argument("file")
    q.add_argument("--model", required=True, help="pixart-alpha, pixart-sigma, flux-dev or flux-schnell")
    q.add_argument("--height", type=int, required=True)
    q.add_argument("--width", type=int, required=True)
    q.add_argument("--cfg-batch", type=int, default=None,
                   help="batch per model call (default: 2 = CFG batch, as ECAD measured)")
    q.add_argument("--text-tokens", type=int, default=None, help="text length (default: the model's)")
    q.add_argument("--mode", choices=["ecad", "full"], default="ecad",
                   help="ecad: linear layers only, as ECAD measured; full: with attention products")
    q.set_defaults(fn=_cmd_macs)

    q = sub.add_parser("demo", help="apply the shipped presets to a built-in tiny PixArt-α and time it")
    q.add_argument("--steps", type=int, default=20)
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--out", default=None, help="folder for the demo's images (optional)")
    q.set_defaults(fn=_cmd_demo)

    from .search.cli_commands import register as register_search
    register_search(sub)
    from .evaluation.cli_commands import register as register_eval
    register_eval(sub)
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except (EcadError, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
