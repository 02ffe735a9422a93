"""python -m ecad_core: info, convert, macs — output and exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import reference

REPO = Path(__file__).resolve().parents[1]
REF = reference.PAPER


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ecad_core", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


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


@pytest.mark.usefixtures("ecad_reference")
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
        r = cli(
            "macs",
            "--model",
            "pixart-alpha",
            "--height",
            256,
            "--width",
            256,
            "--cfg-batch",
            2,
            REPO / f"schedules/pixart-alpha-256-{name}.json",
        )
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert abs(d["total_TMACs"] - t) / t < 0.02
        assert abs(d["no_cache_TMACs"] - 5.714) < 0.01
        assert abs(d["speedup_vs_no_cache"] - 5.714 / t) < 0.05


def test_macs_errors_are_clear():
    r = cli(
        "macs", "--model", "flux-dev", "--height", 256, "--width", 256, REPO / "schedules/pixart-alpha-256-fast.json"
    )
    assert r.returncode == 2 and "is for pixart" in r.stderr
    r = cli("macs", "--model", "sd15", "--height", 256, "--width", 256, REPO / "schedules/pixart-alpha-256-fast.json")
    assert r.returncode == 2 and "known:" in r.stderr


def _bounded():
    import resource  # the child may allocate 8 GB of address space at most (torch alone maps ~3 GB)

    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, resource.RLIM_INFINITY))


def test_info_refuses_devices_and_fifos(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for p in ("/dev/zero", fifo):
        try:  # before the fix: /dev/zero read until out of memory, the FIFO waited for a writer forever
            r = subprocess.run(
                [sys.executable, "-m", "ecad_core", "info", str(p)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
                preexec_fn=_bounded,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"info {p} still reading after 60 s") from None
        assert r.returncode == 2 and r.stdout == "", r.stderr[-2000:]
        assert r.stderr.strip() == f"error: {p}: is not a regular file (a device, FIFO or socket cannot be a schedule)"


def test_info_refuses_a_schedule_without_units(tmp_path):
    # a zero-block file was accepted and info printed "recompute_fraction": NaN
    for name, d in (
        ("ecad.json", {"cache_schedule": {"num_blocks": 0, "schedule": {"000": {}}}}),
        (
            "ours.json",
            {
                "format": "comfyui-ecad/schedule",
                "version": 1,
                "name": "empty",
                "family": "pixart",
                "layout": [{"prefix": "", "count": 0, "components": ["attn1", "attn2", "ff"]}],
                "steps": 2,
                "bits": ["", ""],
            },
        ),
    ):
        p = tmp_path / name
        p.write_text(json.dumps(d))
        r = cli("info", p)
        assert r.returncode == 2 and r.stdout == "" and "NaN" not in r.stderr
        assert r.stderr.startswith(f"error: {p}: has no units: every block count is 0"), r.stderr


@pytest.mark.usefixtures("ecad_reference")
def test_convert_never_writes_a_file_it_cannot_read(tmp_path):
    # 1e400 parses as inf; convert wrote it out as Infinity, which every reader (ours too) refuses
    src = tmp_path / "inf.json"
    d = json.loads((REF / "pixart_alpha_256/ours_fast.json").read_text())
    d["metrics"] = {"speedup": 1}
    src.write_text(json.dumps(d).replace('"speedup": 1', '"speedup": 1e400'))
    for fmt in ("project", "ecad"):
        out = tmp_path / f"out-{fmt}.json"
        r = cli("convert", src, out, "--to", fmt)
        assert r.returncode == 2 and not out.exists(), (r.stdout, r.stderr)
        assert (
            r.stderr.strip() == f"error: {src}: number at metrics.speedup is not finite (inf); only finite "
            "numbers are allowed"
        )


def test_run_seeds_out_of_range_are_refused_naming_the_option(tmp_path):
    out = tmp_path / "o"
    for seed in (2**64, -1, 10**30):
        r = cli("run", "--model", "tiny:pixart-alpha", "--prompt", "a cat", "--seeds", 0, seed, "--out", out)
        assert r.returncode == 2 and r.stdout == "", (seed, r.stdout, r.stderr)
        assert r.stderr.strip() == f"error: --seeds: {seed} is out of range; a seed is an integer in 0..{2**64 - 1}", (
            r.stderr
        )
        assert not out.exists()  # refused before anything ran
    # the largest seed is fine
    r = cli(
        "run",
        "--model",
        "tiny:pixart-alpha",
        "--prompt",
        "a cat",
        "--seeds",
        2**64 - 1,
        "--steps",
        2,
        "--height",
        64,
        "--width",
        64,
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    assert [f.name for f in out.glob("*.png")] == [f"000_seed{2**64 - 1}.png"]


def test_info_and_convert_import_no_torch(tmp_path):
    # `ecad info` ran ~10 s when `import ecad_core` pulled in torch; the schedule commands need numpy only
    code = (
        "import sys\n"
        "from ecad_core.cli import main\n"
        f"assert main(['info', {str(REPO / 'schedules/pixart-alpha-256-fast.json')!r}]) == 0\n"
        f"assert main(['convert', {str(REPO / 'schedules/flux-dev-256-fast.json')!r}, "
        f"{str(tmp_path / 'out.json')!r}]) == 0\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'pymoo') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ecad_core", "info", REPO / "schedules/pixart-alpha-256-fast.json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "ecad_core.schedule" in imported
