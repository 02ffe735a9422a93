"""Schedules: the project format, ECAD's reference format, validation and remapping."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import reference
from support.schedule_corpus import (
    BAD_ECAD,
    BAD_OURS,
    FILE_LEVEL,
    REF,
    REPO,
    fuzzed_files,
    pixart_dict,
    write_bad_files,
    write_special_files,
)

from ecad_core import ModelMismatchError, Schedule, ScheduleError, load_schedule, make_layout
from ecad_core.schedule import from_json_dict, loads_schedule
from ecad_core.schedule.ecad_format import from_ecad_dict, to_ecad_dict

REF_FILES = sorted(REF.glob("**/*.json"))


def test_reference_folder_is_complete(ecad_reference):
    assert len(REF_FILES) == 267, f"expected the 267 reference schedules under {REF}"


@pytest.mark.parametrize("path", reference.params("**/*.json"))
def test_every_reference_file_loads_and_round_trips(path, tmp_path):
    raw = json.loads(path.read_text())
    s = load_schedule(path)
    cs = raw["cache_schedule"]
    # the bits we hold are exactly the file's bits
    for step_key, blocks in cs["schedule"].items():
        for block, comps in blocks.items():
            for comp, v in comps.items():
                if isinstance(v, bool):
                    assert s.bit(int(step_key), block, comp) == v
    assert s.steps == len(cs["schedule"])
    # ECAD -> ours (file) -> ECAD gives the same bits (and the same file content)
    ours = s.save(tmp_path / "s.json")
    back = to_ecad_dict(load_schedule(ours))
    assert back == raw


def test_project_format_is_lossless_and_diff_friendly(tmp_path):
    s = load_schedule(REPO / "schedules" / "flux-dev-256-fast.json")
    p = s.save(tmp_path / "x.json")
    text = p.read_text()
    assert load_schedule(p) == s
    assert s.dumps() == text  # writing is deterministic
    lines = text.splitlines()
    # one line per step, one space-separated group per block
    step_lines = [ln for ln in lines if ln.strip().startswith('"') and set(ln.strip(' ",')) <= set("01 ")]
    assert len(step_lines) == s.steps
    assert len(step_lines[0].strip(' ",').split()) == 19 + 38


@pytest.mark.usefixtures("ecad_reference")
def test_layout_order_matches_ecad_compact_bit_order():
    compact = json.loads((REF.parent / "compact" / "ecad_schedules_compact.json").read_text())
    compact if isinstance(compact, list) else list(compact.values()) if isinstance(compact, dict) else []
    # find the entry for ours_fastest and compare bit strings
    text = json.dumps(compact)
    s = load_schedule(REF / "schedules_in_paper/pixart_alpha_256/ours_fastest.json")
    row1 = "".join("1" if b else "0" for b in s.bits[2])
    assert row1 in text, "bit order differs from ECAD's flattening (3*block + component)"


@pytest.mark.parametrize("name,mutate,msg", BAD_ECAD, ids=[b[0] for b in BAD_ECAD])
def test_bad_ecad_files_name_file_and_problem(tmp_path, name, mutate, msg):
    d = pixart_dict()
    mutate(d)
    p = tmp_path / "bad_schedule.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ScheduleError) as e:
        load_schedule(p)
    assert str(p) in str(e.value)
    assert msg in str(e.value), str(e.value)


@pytest.mark.parametrize("name,d,msg", BAD_OURS, ids=[b[0] for b in BAD_OURS])
def test_bad_project_files_are_refused(tmp_path, name, d, msg):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ScheduleError) as e:
        load_schedule(p)
    assert str(p) in str(e.value) and msg in str(e.value), str(e.value)


def test_file_level_errors(tmp_path):
    for name, content, msg in FILE_LEVEL:
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ScheduleError) as e:
            load_schedule(p)
        assert str(p) in str(e.value) and msg in str(e.value), str(e.value)
    with pytest.raises(ScheduleError, match="file not found"):
        load_schedule(tmp_path / "nope.json")
    with pytest.raises(ScheduleError, match="is a directory"):
        load_schedule(tmp_path)
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(17 * 1024 * 1024)
    with pytest.raises(ScheduleError, match="file too large"):
        load_schedule(big)


def test_every_bad_file_is_one_schedule_error_naming_it(tmp_path):
    """The whole named corpus at once, and the same documents through loads_schedule."""
    for p, msg in write_bad_files(tmp_path):
        with pytest.raises(ScheduleError) as e:
            load_schedule(p)
        assert str(p) in str(e.value) and msg in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)
        assert len(e.value.problem) <= 300
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        with pytest.raises(ScheduleError) as e:
            loads_schedule(text, source="pasted")
        assert str(e.value).startswith("pasted: ")


def _load_bounded(path, timeout=60):
    """load_schedule(path) in a child with 1 GB of address space to spare and a time limit: what the
    child prints (the ScheduleError), or why it did not finish. Before the fixes, these files read
    forever (/dev/zero, a FIFO) or built a huge set; the limits make that a failure, not a stuck test."""
    code = (
        "import resource, sys\n"
        "from ecad_core import load_schedule, ScheduleError\n"
        "vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))\n"
        "try:\n    load_schedule(sys.argv[1])\nexcept ScheduleError as e:\n    print(e)\n"
    )
    try:
        r = subprocess.run(
            [sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"still reading after {timeout} s"
    return r.stdout if r.returncode == 0 else f"exit {r.returncode}: {r.stderr[-1000:]}"


def test_devices_and_fifos_are_refused_without_reading(tmp_path):
    """/dev/zero and a FIFO would read forever (a FIFO's open would wait for a writer)."""
    for p, msg in write_special_files(tmp_path) + [(Path("/dev/zero"), "is not a regular file")]:
        assert f"{p}: {msg}" in _load_bounded(p, timeout=30)
        with pytest.raises(ScheduleError, match=msg):  # in-process too, now that it is safe
            load_schedule(p)


def test_huge_step_number_costs_no_memory(tmp_path):
    """Steps "000" and "999999999": the missing-step message once built a set up to the largest number
    (a 1e9-element set from a 60-byte file)."""
    p = tmp_path / "huge-step.json"
    p.write_text(json.dumps(_steps_dict({"000": {}, "999999999": {}})))
    assert f"{p}: cache_schedule.schedule: missing step(s) 001" in _load_bounded(p)


def _steps_dict(steps):
    d = pixart_dict()
    d["cache_schedule"]["schedule"] = steps
    return d


def test_fuzzed_files_fail_cleanly_never_partially(tmp_path):
    """Random corruptions of real files: either a clean ScheduleError or a complete schedule."""
    n_err = n_ok = 0
    for p in fuzzed_files(tmp_path):
        try:
            s = load_schedule(p)
        except ScheduleError as e:
            assert str(p) in str(e)
            assert len(str(e).splitlines()) == 1
            n_err += 1
        else:
            n_ok += 1
            assert s.bits.shape == (s.steps, s.layout.n_units)
    assert n_err > 300


def test_save_never_writes_non_finite_numbers(tmp_path):
    """json.dumps would write Infinity, which the reader refuses: saving fails first, leaving no file."""
    s = Schedule.full(make_layout("pixart", 2), 3, name="t", metrics={"expected_speedup": float("inf")})
    with pytest.raises(ScheduleError, match=r"t: cannot be saved: number at metrics.expected_speedup is not finite"):
        s.save(tmp_path / "x.json")
    assert not list(tmp_path.iterdir())


def test_schedules_made_in_code_have_the_same_size_limits():
    with pytest.raises(ScheduleError, match="has no units"):
        Schedule.full(make_layout("pixart", 0), 3)
    with pytest.raises(ScheduleError, match="2049 units per step is more than the limit"):
        Schedule.full(make_layout("dit_blocks", 2049), 1)
    with pytest.raises(ScheduleError, match="unit-steps is more than the limit"):
        Schedule.full(make_layout("dit_blocks", 2000), 501)
    # the real extremes fit: FLUX.1 (171 units) and a 60-block x 6-unit model at 1000 steps
    assert Schedule.full(make_layout("flux", 19, 38), 1000).steps == 1000
    assert Schedule.full(make_layout("dit_blocks", 360), 1000).layout.n_units == 360


def test_info_for_units_and_fraction():
    s = load_schedule(REPO / "schedules/pixart-alpha-256-fastest.json")
    info = s.summary()
    assert info["family"] == "pixart" and info["steps"] == 20 and info["blocks"] == {"blocks": 28}
    assert info["units_per_step"] == 84
    assert 0.15 < info["recompute_fraction"] < 0.25


def test_step_zero_always_effective():
    lay = make_layout("pixart", 2)
    s = Schedule(lay, np.zeros((4, 6), bool))
    assert s.effective_bits()[0].all() and not s.effective_bits()[1:].any()
    assert not s.bits[0].any()  # stored bits untouched (round trip)


def test_check_fits_names_both_models():
    s = load_schedule(REPO / "schedules/flux-dev-256-fast.json")
    with pytest.raises(ModelMismatchError, match=r"flux-dev-256-fast.*19 main blocks.*pixart: 28"):
        s.check_fits(make_layout("pixart", 28), "PixArt")


def test_loads_and_dict_parsers_agree():
    s = load_schedule(REPO / "schedules/pixart-sigma-256-fast.json")
    assert loads_schedule(s.dumps()) == s
    assert from_json_dict(json.loads(s.dumps())) == s
    e = to_ecad_dict(s)
    assert np.array_equal(from_ecad_dict(e).bits, s.bits)


def test_the_format_doc_states_the_limits():
    """docs/schedule-format.md's Limits table gives each limit the loader enforces, with its value."""
    from ecad_core import schedule as sch

    doc = (REPO / "docs" / "schedule-format.md").read_text(encoding="utf-8")
    assert "\n## Limits\n" in doc
    rows = {
        ln.split("|")[3].strip(" `"): ln
        for ln in doc.split("\n## Limits\n")[1].split("\n## ")[0].splitlines()
        if ln.startswith("| ") and ln.count("|") == 4
    }
    assert sch.MAX_ABS_INT == 2**63  # the doc writes it as 2⁶³
    for const, shown in (
        ("MAX_FILE_BYTES", f"{sch.MAX_FILE_BYTES // 2**20} MiB"),
        ("MAX_STEPS", f"1 to {sch.MAX_STEPS}"),
        ("MAX_UNITS", f"1 to {sch.MAX_UNITS}"),
        ("MAX_UNIT_STEPS", f"{sch.MAX_UNIT_STEPS:,}".replace(",", " ")),
        ("MAX_DEPTH", f"at most {sch.MAX_DEPTH} levels"),
        ("MAX_ABS_INT", "−2⁶³ and 2⁶³"),
    ):
        assert shown in rows.get(const, ""), (const, shown, rows.get(const))
    assert "zero units" in rows["MAX_UNITS"] and "finite only" in doc and "lone surrogate" in doc
