"""python -m ecad_core: info, convert, macs — output and exit codes."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REF = REPO.parent / "shared/ecad-reference/schedules/schedules_in_paper"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ecad_core", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_info_prints_json():
    r = cli("info", REPO / "schedules/pixart-alpha-256-fastest.json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["family"] == "pixart" and d["steps"] == 20 and d["blocks"] == {"blocks": 28}
    assert d["components"] == ["attn1", "attn2", "ff"] and 0 < d["recompute_fraction"] < 1


def test_info_bad_file_one_line_nonzero(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"cache_schedule": {"num_blocks": 2, "schedule": {"000": {"0": {"attn9": true}}}}}')
    r = cli("info", p)
    assert r.returncode != 0 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "attn9" in r.stderr and str(p) in r.stderr


def test_convert_both_ways_round_trip(tmp_path):
    src = REF / "flux_256/ours_fast.json"
    ours, back = tmp_path / "ours.json", tmp_path / "back.json"
    assert cli("convert", src, ours).returncode == 0
    assert json.loads(ours.read_text())["format"] == "comfyui-ecad/schedule"
    assert cli("convert", ours, back).returncode == 0
    assert json.loads(back.read_text()) == json.loads(src.read_text())


def test_macs_reproduces_ecad_totals():
    want = {"fast": 2.135, "faster": 1.456, "fastest": 1.175}
    for name, t in want.items():
        r = cli("macs", "--model", "pixart-alpha", "--height", 256, "--width", 256, "--cfg-batch", 2,
                REPO / f"schedules/pixart-alpha-256-{name}.json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert abs(d["total_TMACs"] - t) / t < 0.02
        assert abs(d["no_cache_TMACs"] - 5.714) < 0.01
        assert abs(d["speedup_vs_no_cache"] - 5.714 / t) < 0.05


def test_macs_errors_are_clear():
    r = cli("macs", "--model", "flux-dev", "--height", 256, "--width", 256, REPO / "schedules/pixart-alpha-256-fast.json")
    assert r.returncode == 2 and "is for pixart" in r.stderr
    r = cli("macs", "--model", "sd15", "--height", 256, "--width", 256, REPO / "schedules/pixart-alpha-256-fast.json")
    assert r.returncode == 2 and "known:" in r.stderr
