"""Corrupted and hostile schedule files, shared by the loader tests (test_schedule_format.py) and the
library tests (test_library_bad_files.py): each case is a file the loader must refuse with one
ScheduleError naming the file, plus random corruptions of real files (refused or complete)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ecad_core import Schedule, make_layout

from . import reference

REPO = Path(__file__).resolve().parents[2]
REF = reference.SCHEDULES  # may be missing: the tests that read it take the ecad_reference fixture


def pixart_dict(steps=3, blocks=2):
    return {
        "cache_schedule": {
            "num_blocks": blocks,
            "num_inference_steps": steps,
            "name": "t",
            "attributes": {},
            "schedule": {
                f"{s:03d}": {str(b): {"attn1": True, "attn2": s == 0, "ff": True} for b in range(blocks)}
                for s in range(steps)
            },
        }
    }


def ours(**changes):
    d = Schedule.full(make_layout("pixart", 2), 3, name="t").to_json_dict()
    d.update(changes)
    return d


def _ecad(mutate):
    d = pixart_dict()
    mutate(d)
    return d


def _steps(d, steps):
    d["cache_schedule"]["schedule"] = steps


# (name, mutation of pixart_dict(), expected message part)
BAD_ECAD = [
    (
        "unknown component",
        lambda d: d["cache_schedule"]["schedule"]["001"]["0"].update(attn3=True),
        "unknown component(s) attn3",
    ),
    (
        "unknown block",
        lambda d: d["cache_schedule"]["schedule"]["001"].update({"7": {"attn1": True, "attn2": True, "ff": True}}),
        "step 001: unknown block '7'",
    ),
    ("missing block", lambda d: d["cache_schedule"]["schedule"]["002"].pop("1"), "step 002: missing block '1'"),
    ("missing step", lambda d: d["cache_schedule"]["schedule"].pop("001"), "missing step(s) 001"),
    (
        "non-boolean",
        lambda d: d["cache_schedule"]["schedule"]["001"]["1"].update(ff=1),
        "step 001, block 1, component ff: expected true or false, got 1",
    ),
    (
        "string boolean",
        lambda d: d["cache_schedule"]["schedule"]["000"]["0"].update(attn1="true"),
        "component attn1: expected true or false",
    ),
    ("missing component", lambda d: d["cache_schedule"]["schedule"]["001"]["0"].pop("ff"), "missing component 'ff'"),
    ("wrong block count", lambda d: d["cache_schedule"].update(num_blocks=3), "missing block '2'"),
    ("bad step key", lambda d: d["cache_schedule"]["schedule"].update(abc={}), "step key 'abc'"),
    ("no schedule", lambda d: d["cache_schedule"].pop("schedule"), "cache_schedule.schedule must be"),
    ("num_blocks missing", lambda d: d["cache_schedule"].pop("num_blocks"), "num_blocks is missing"),
    ("num_blocks bool", lambda d: d["cache_schedule"].update(num_blocks=True), "num_blocks must be"),
    (
        "flux comp in pixart",
        lambda d: d["cache_schedule"]["schedule"]["000"]["0"].update(full_ff=True),
        "mixes PixArt and FLUX",
    ),
    (
        "step not object",
        lambda d: d["cache_schedule"]["schedule"].update({"001": [1, 2]}),
        "step 001: must be an object",
    ),
    # "²".isdigit() is True, int("²") is a ValueError
    ("superscript step key", lambda d: d["cache_schedule"]["schedule"].update({"²": {}}), "step key '²'"),
    ("arabic-indic step key", lambda d: d["cache_schedule"]["schedule"].update({"٣": {}}), "step key '٣'"),
    (
        "5000-digit step key",
        lambda d: d["cache_schedule"]["schedule"].update({"0" * 5000 + "1": {}}),
        "is not a step number",
    ),
    (
        "same step twice",
        lambda d: d["cache_schedule"]["schedule"].update({"2": d["cache_schedule"]["schedule"]["002"]}),
        "duplicate step numbers",
    ),
    (
        "zero blocks",
        lambda d: (d["cache_schedule"].update(num_blocks=0), _steps(d, {"000": {}, "001": {}})),
        "has no units",
    ),
    (
        "4096 blocks",
        lambda d: (d["cache_schedule"].update(num_blocks=4096), _steps(d, {"000": {}})),
        "12288 units per step is more than the limit",
    ),
    ("nested junk in config", lambda d: d.update(config=_nested(200)), "nested more than 32 levels deep"),
    # names copied from the file into the message stay on one line and short
    (
        "line break in a component",
        lambda d: d["cache_schedule"]["schedule"]["001"]["0"].update({"ff\u2028x": True}),
        "unknown component(s) ff\\u2028x;",
    ),
    (
        "huge block name",
        lambda d: d["cache_schedule"]["schedule"]["001"].update({"b" * 100000: {}}),
        "step 001: unknown block 'bbbb",
    ),
]


def _nested(depth):
    o = {}
    for _ in range(depth):
        o = {"a": [o]}
    return o


BAD_OURS = [
    ("wrong step count", ours(steps=4), "'steps' is 4 but 'bits' has 3"),
    ("too few bits", ours(bits=["111 111", "111 11", "111 111"]), "bits of step 1: expected 6 bits"),
    ("non-binary", ours(bits=["111 111", "111 121", "111 111"]), "only '0' and '1'"),
    ("bits not string", ours(bits=["111 111", 7, "111 111"]), "bits of step 1: expected a string"),
    ("unknown family", ours(family="unet"), "unknown model family 'unet'"),
    (
        "wrong components",
        ours(layout=[{"prefix": "", "count": 2, "components": ["attn1", "ff"]}]),
        "components must be",
    ),
    ("unknown key", ours(speed=2), "unknown key(s): speed"),
    ("bad version", ours(version=9), "unsupported format version 9"),
    ("steps zero", ours(steps=0, bits=[]), "'steps' must be an integer"),
    ("bad grouping", ours(bits=["11 1111", "111 111", "111 111"]), "one per block"),
    # a list or object as the block prefix is unhashable (was a TypeError)
    (
        "list prefix",
        ours(layout=[{"prefix": [1], "count": 2, "components": ["attn1", "attn2", "ff"]}]),
        "block prefix [1] is not part of family",
    ),
    (
        "object prefix",
        ours(layout=[{"prefix": {"a": 1}, "count": 2, "components": ["attn1", "attn2", "ff"]}]),
        "block prefix {'a': 1} is not part of family",
    ),
    (
        "number prefix",
        ours(layout=[{"prefix": 0, "count": 2, "components": ["attn1", "attn2", "ff"]}]),
        "block prefix 0 is not part of family",
    ),
    ("list family", ours(family=["pixart"]), "'family' must be a string"),
    ("line break in a key", ours(**{"spe\ned": 2}), "unknown key(s): spe\\ned"),
    (
        "huge count",
        ours(layout=[{"prefix": "", "count": 10**30, "components": ["attn1", "attn2", "ff"]}]),
        "is too large",
    ),
    ("huge int metric", ours(metrics={"expected_speedup": 10**400}), "metrics.expected_speedup is too large"),
    ("deep provenance", ours(provenance=_nested(400)), "nested more than 32 levels deep"),
    (
        "zero blocks",
        ours(layout=[{"prefix": "", "count": 0, "components": ["attn1", "attn2", "ff"]}], bits=["", "", ""]),
        "has no units",
    ),
    (
        "too many units",
        ours(family="flux", steps=1, bits=["1" * (2 * 4096 * 3)], layout=make_layout("flux", 4096, 4096).to_json()),
        "24576 units per step is more than the limit of 2048",
    ),
    (
        "too many unit-steps",
        ours(
            family="dit_blocks",
            steps=501,
            bits=["1" * 2000] * 501,
            layout=make_layout("dit_blocks", 1000, 1000).to_json(),
        ),
        "501 steps x 2000 units = 1002000 unit-steps is more than the limit",
    ),
]

# (file name, raw bytes, expected message part): problems below the schedule level
FILE_LEVEL = [
    ("empty.json", b"", "not valid JSON"),
    ("trunc.json", b'{"cache_schedule": {"num_blocks": 2, ', "not valid JSON"),
    ("bin.json", b"\xff\xfe\x00garbage", "not UTF-8"),
    ("nan.json", b'{"cache_schedule": NaN}', "NaN is not allowed"),
    ("list.json", b"[1, 2]", "top level must be a JSON object"),
    ("deep.json", b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (
        "overflow.json",
        json.dumps(ours(metrics={"x": 1})).replace('"x": 1', '"x": 1e400').encode(),
        "metrics.x is not finite",
    ),
    (
        "neg-overflow.json",
        json.dumps(ours(metrics={"x": 1})).replace('"x": 1', '"x": -1e999').encode(),
        "metrics.x is not finite",
    ),
    (
        "surrogate.json",
        json.dumps(ours(name="t")).replace('"name": "t"', '"name": "\\ud800"').encode(),
        "is not valid Unicode",
    ),
    (
        "5000-digit.json",
        json.dumps(ours(metrics={"x": 1})).replace('"x": 1', '"x": 1' + "0" * 5000).encode(),
        "not valid JSON",
    ),
]


def write_bad_files(folder: Path) -> list[tuple[Path, str]]:
    """Writes every named bad case into ``folder``; returns (path, expected message part)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, mutate, msg in BAD_ECAD:
        out.append((folder / f"ecad-{_slug(name)}.json", _ecad(mutate), msg))
    for name, d, msg in BAD_OURS:
        out.append((folder / f"ours-{_slug(name)}.json", d, msg))
    written = []
    for path, d, msg in out:
        path.write_text(json.dumps(d))
        written.append((path, msg))
    for name, raw, msg in FILE_LEVEL:
        (folder / name).write_bytes(raw)
        written.append((folder / name, msg))
    return written


def write_special_files(folder: Path) -> list[tuple[Path, str]]:
    """Things that are not files: a FIFO and a link to /dev/zero (both would read forever), a dangling link."""
    folder.mkdir(parents=True, exist_ok=True)
    fifo, zero, dangling = folder / "fifo.json", folder / "zero.json", folder / "dangling.json"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    dangling.symlink_to(folder / "no-such-file")
    return [(fifo, "is not a regular file"), (zero, "is not a regular file"), (dangling, "file not found")]


def _slug(name):
    return "".join(c if c.isalnum() else "-" for c in name)


# ECAD-format sources (the paper's files; without the reference folder, the same schedules exported from the shipped
# presets) and a project-format one
FUZZ_SOURCES = [
    (REF / "schedules_in_paper/pixart_alpha_256/ours_fast.json", "pixart-alpha-256-fast"),
    (REF / "schedules_in_paper/flux_256/ours_faster.json", "flux-dev-256-faster"),
    (REPO / "schedules/pixart-alpha-256-fast.json", None),
]


def _source_bytes(path: Path, preset: str | None) -> bytes:
    if preset is None or path.is_file():
        return path.read_bytes()
    from ecad_core.schedule import load_schedule, to_ecad_dict

    return json.dumps(to_ecad_dict(load_schedule(REPO / "schedules" / f"{preset}.json")), indent=4).encode()


def fuzzed_files(folder: Path, per_source: int = 120, seed: int = 0) -> list[Path]:
    """Random corruptions of real files (truncated, bytes flipped, values swapped, spans deleted)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for j, (src, preset) in enumerate(FUZZ_SOURCES):
        data = _source_bytes(src, preset)
        for i in range(per_source):
            b = bytearray(data)
            kind = i % 4
            if kind == 0:  # truncate
                b = b[: rng.integers(0, len(b))]
            elif kind == 1:  # flip bytes
                for pos in rng.integers(0, len(b), size=int(rng.integers(1, 8))):
                    b[pos] = int(rng.integers(0, 256))
            elif kind == 2:  # swap a true/false or 0/1 for junk
                t = b.decode(errors="replace")
                for a, c in (("true", "1"), ("false", "null"), ('"1', '"2'), ("0 ", "0x")):
                    t = t.replace(a, c, int(rng.integers(1, 3)))
                b = bytearray(t.encode())
            else:  # delete a random span
                s = int(rng.integers(0, len(b)))
                del b[s : s + int(rng.integers(1, 400))]
            p = folder / f"fuzz{j}-{i}.json"
            p.write_bytes(bytes(b))
            out.append(p)
    return out
