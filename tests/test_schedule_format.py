"""Schedules: the project format, ECAD's reference format, validation and remapping."""
import json
from pathlib import Path

import numpy as np
import pytest

from ecad_core import ModelMismatchError, Schedule, ScheduleError, load_schedule, make_layout, remap_steps
from ecad_core.ecad_format import from_ecad_dict, to_ecad_dict
from ecad_core.schedule import from_json_dict, loads_schedule

REF = Path(__file__).resolve().parents[2] / "shared" / "ecad-reference" / "schedules"
REPO = Path(__file__).resolve().parents[1]
REF_FILES = sorted(REF.glob("**/*.json"))


def test_reference_folder_is_complete():
    assert len(REF_FILES) == 267, f"expected the 267 reference schedules under {REF}"


@pytest.mark.parametrize("path", REF_FILES, ids=lambda p: str(p.relative_to(REF)))
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
    step_lines = [l for l in lines if l.strip().startswith('"') and set(l.strip(' ",')) <= set("01 ")]
    assert len(step_lines) == s.steps
    assert len(step_lines[0].strip(' ",').split()) == 19 + 38


def test_layout_order_matches_ecad_compact_bit_order():
    compact = json.loads((REF.parent / "compact" / "ecad_schedules_compact.json").read_text())
    entries = compact if isinstance(compact, list) else list(compact.values()) if isinstance(compact, dict) else []
    # find the entry for ours_fastest and compare bit strings
    text = json.dumps(compact)
    s = load_schedule(REF / "schedules_in_paper/pixart_alpha_256/ours_fastest.json")
    row1 = "".join("1" if b else "0" for b in s.bits[2])
    assert row1 in text, "bit order differs from ECAD's flattening (3*block + component)"


def _pixart_dict(steps=3, blocks=2):
    return {"cache_schedule": {"num_blocks": blocks, "num_inference_steps": steps, "name": "t",
                               "attributes": {},
                               "schedule": {f"{s:03d}": {str(b): {"attn1": True, "attn2": s == 0, "ff": True}
                                                         for b in range(blocks)} for s in range(steps)}}}


BAD_ECAD = [
    ("unknown component", lambda d: d["cache_schedule"]["schedule"]["001"]["0"].update(attn3=True),
     "unknown component(s) attn3"),
    ("unknown block", lambda d: d["cache_schedule"]["schedule"]["001"].update({"7": {"attn1": True, "attn2": True, "ff": True}}),
     "step 001: unknown block '7'"),
    ("missing block", lambda d: d["cache_schedule"]["schedule"]["002"].pop("1"), "step 002: missing block '1'"),
    ("missing step", lambda d: d["cache_schedule"]["schedule"].pop("001"), "missing step(s) 001"),
    ("non-boolean", lambda d: d["cache_schedule"]["schedule"]["001"]["1"].update(ff=1),
     "step 001, block 1, component ff: expected true or false, got 1"),
    ("string boolean", lambda d: d["cache_schedule"]["schedule"]["000"]["0"].update(attn1="true"),
     "component attn1: expected true or false"),
    ("missing component", lambda d: d["cache_schedule"]["schedule"]["001"]["0"].pop("ff"), "missing component 'ff'"),
    ("wrong block count", lambda d: d["cache_schedule"].update(num_blocks=3), "missing block '2'"),
    ("bad step key", lambda d: d["cache_schedule"]["schedule"].update(abc={}), "step key 'abc'"),
    ("no schedule", lambda d: d["cache_schedule"].pop("schedule"), "cache_schedule.schedule must be"),
    ("num_blocks missing", lambda d: d["cache_schedule"].pop("num_blocks"), "num_blocks is missing"),
    ("num_blocks bool", lambda d: d["cache_schedule"].update(num_blocks=True), "num_blocks must be"),
    ("flux comp in pixart", lambda d: d["cache_schedule"]["schedule"]["000"]["0"].update(full_ff=True),
     "mixes PixArt and FLUX"),
    ("step not object", lambda d: d["cache_schedule"]["schedule"].update({"001": [1, 2]}), "step 001: must be an object"),
]


@pytest.mark.parametrize("name,mutate,msg", BAD_ECAD, ids=[b[0] for b in BAD_ECAD])
def test_bad_ecad_files_name_file_and_problem(tmp_path, name, mutate, msg):
    d = _pixart_dict()
    mutate(d)
    p = tmp_path / "bad_schedule.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ScheduleError) as e:
        load_schedule(p)
    assert str(p) in str(e.value)
    assert msg in str(e.value)


def _ours(**changes):
    d = Schedule.full(make_layout("pixart", 2), 3, name="t").to_json_dict()
    d.update(changes)
    return d


BAD_OURS = [
    ("wrong step count", _ours(steps=4), "'steps' is 4 but 'bits' has 3"),
    ("too few bits", _ours(bits=["111 111", "111 11", "111 111"]), "bits of step 1: expected 6 bits"),
    ("non-binary", _ours(bits=["111 111", "111 121", "111 111"]), "only '0' and '1'"),
    ("bits not string", _ours(bits=["111 111", 7, "111 111"]), "bits of step 1: expected a string"),
    ("unknown family", _ours(family="unet"), "unknown model family 'unet'"),
    ("wrong components", _ours(layout=[{"prefix": "", "count": 2, "components": ["attn1", "ff"]}]),
     "components must be"),
    ("unknown key", _ours(speed=2), "unknown key(s): speed"),
    ("bad version", _ours(version=9), "unsupported format version 9"),
    ("steps zero", _ours(steps=0, bits=[]), "'steps' must be an integer"),
    ("bad grouping", _ours(bits=["11 1111", "111 111", "111 111"]), "one per block"),
]


@pytest.mark.parametrize("name,d,msg", BAD_OURS, ids=[b[0] for b in BAD_OURS])
def test_bad_project_files_are_refused(tmp_path, name, d, msg):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ScheduleError) as e:
        load_schedule(p)
    assert str(p) in str(e.value) and msg in str(e.value), str(e.value)


def test_file_level_errors(tmp_path):
    cases = {
        "empty.json": (b"", "not valid JSON"),
        "trunc.json": (b'{"cache_schedule": {"num_blocks": 2, ', "not valid JSON"),
        "bin.json": (b"\xff\xfe\x00garbage", "not UTF-8"),
        "nan.json": (b'{"cache_schedule": NaN}', "NaN is not allowed"),
        "list.json": (b"[1, 2]", "top level must be a JSON object"),
    }
    for name, (content, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ScheduleError, match=msg):
            load_schedule(p)
    with pytest.raises(ScheduleError, match="file not found"):
        load_schedule(tmp_path / "nope.json")
    with pytest.raises(ScheduleError, match="is a directory"):
        load_schedule(tmp_path)
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(17 * 1024 * 1024)
    with pytest.raises(ScheduleError, match="file too large"):
        load_schedule(big)


def test_fuzzed_files_fail_cleanly_never_partially(tmp_path):
    """Random corruptions of real files: either a clean ScheduleError or a complete schedule."""
    rng = np.random.default_rng(0)
    sources = [REF / "schedules_in_paper/pixart_alpha_256/ours_fast.json",
               REF / "schedules_in_paper/flux_256/ours_faster.json",
               REPO / "schedules/pixart-alpha-256-fast.json"]
    n_err = n_ok = 0
    for src in sources:
        data = src.read_bytes()
        for i in range(120):
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
                del b[s: s + int(rng.integers(1, 400))]
            p = tmp_path / f"f{i}.json"
            p.write_bytes(bytes(b))
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


class TestRemap:
    lay = make_layout("pixart", 1)

    def _s(self, rows):
        return Schedule(self.lay, np.array([[c == "1" for c in r] for r in rows]))

    def test_identity(self):
        s = self._s(["111", "010", "001", "100"])
        assert np.array_equal(remap_steps(s, 4).bits, s.bits)

    def test_upsample_keeps_recompute_count(self):
        s = Schedule.every_n(self.lay, 20, 4)
        r = remap_steps(s, 40)
        assert r.steps == 40 and r.effective_bits().sum() == s.effective_bits().sum()
        assert r.bits[0].all()
        # source step s lands on target floor(s*40/20) = 2s
        assert [i for i in range(40) if r.bits[i].all()] == [0, 8, 16, 24, 32]

    def test_28_and_50_steps(self):
        s = load_schedule(REPO / "schedules/pixart-alpha-256-fast.json")
        for n in (28, 50):
            r = remap_steps(s, n)
            assert r.steps == n and r.bits[0].all()
            # nothing dropped: every source recompute event is somewhere in the target
            assert r.effective_bits().sum() == s.effective_bits().sum()
            assert r.metrics == {} and r.provenance["remapped"][-1]["to_steps"] == n

    def test_downsample_merges_never_drops(self):
        s = self._s(["111", "100", "010", "001"])
        r = remap_steps(s, 2)
        assert r.bits.tolist() == [[True] * 3, [False, True, True]]

    def test_denoise_takes_the_tail(self):
        s = self._s(["111", "100", "010", "001"])
        # denoise 0.5 over 2 steps: full trajectory of 4, runs steps 2,3
        r = remap_steps(s, 2, denoise=0.5)
        assert r.bits.tolist() == [[True] * 3, [False, False, True]]

    def test_bad_arguments(self):
        s = self._s(["111"])
        with pytest.raises(ValueError, match="steps must be"):
            remap_steps(s, 0)
        with pytest.raises(ValueError, match="denoise must be"):
            remap_steps(s, 4, denoise=1.5)


def test_loads_and_dict_parsers_agree():
    s = load_schedule(REPO / "schedules/pixart-sigma-256-fast.json")
    assert loads_schedule(s.dumps()) == s
    assert from_json_dict(json.loads(s.dumps())) == s
    e = to_ecad_dict(s)
    assert np.array_equal(from_ecad_dict(e).bits, s.bits)
