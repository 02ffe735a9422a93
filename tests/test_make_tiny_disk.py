"""The tiny checkpoints' disk rule: short of room, other ComfyUI versions' tiny models go, nothing else does."""

from __future__ import annotations

import json
import struct

import pytest

from comfy_harness import make_tiny


def _write_safetensors(path, metadata: dict, payload: int) -> None:
    """A file with a safetensors header (what ``read_safetensors_metadata`` reads) and ``payload`` bytes after it."""
    head = json.dumps({"__metadata__": metadata}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * payload)


@pytest.fixture
def roots(tmp_path):
    """This version's empty folder, another version's tiny model, and a user's own checkpoint beside it."""
    old = tmp_path / "comfy-0.3.75"
    tiny = old / "diffusion_models" / "ecad_tiny_flux_dev.safetensors"
    _write_safetensors(tiny, {make_tiny.RECIPE_KEY: "abc"}, 4000)
    user = old / "diffusion_models" / "my_model.safetensors"
    _write_safetensors(user, {}, 4000)
    return tmp_path / "comfy-0.33.0", tiny, user


def _used(tmp_path) -> int:
    return sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())


def _free(total: int, tmp_path):
    """Free bytes on a pretend disk of ``total`` bytes that holds the files under ``tmp_path``."""
    return lambda _p: total - _used(tmp_path)


def test_room_enough_deletes_nothing(roots, tmp_path):
    new, tiny, user = roots
    make_tiny.make_room(new, 1000, headroom=1000, free=_free(100_000, tmp_path))
    assert tiny.is_file() and user.is_file() and new.is_dir()


def test_short_of_room_deletes_other_versions_tiny_models_only(roots, tmp_path, capsys):
    new, tiny, user = roots
    used = _used(tmp_path)
    # 3,000 bytes free before, 2,000 needed + 4,000 headroom: the 4,000-byte tiny model goes, the user's file stays
    make_tiny.make_room(new, 2000, headroom=4000, free=_free(used + 3000, tmp_path))
    assert not tiny.exists()
    assert user.is_file()
    assert "comfy-0.3.75's tiny models" in capsys.readouterr().out


def test_short_of_headroom_only_still_builds(roots, tmp_path):
    new, tiny, user = roots
    used = _used(tmp_path)
    # the headroom is a wish: with the cache gone and the files themselves fitting, no error
    make_tiny.make_room(new, 5000, headroom=10**9, free=_free(used + 3000, tmp_path))
    assert not tiny.exists() and user.is_file()


def test_still_short_says_how_much(roots, tmp_path):
    new, tiny, user = roots
    used = _used(tmp_path)
    with pytest.raises(RuntimeError, match=r"not enough disk for the tiny models in .*comfy-0\.33\.0: .* GB free"):
        make_tiny.make_room(new, 10**9, headroom=0, free=_free(used + 3000, tmp_path))
    assert not tiny.exists()  # the cache went first
    assert user.is_file()  # never a user's file, even when still short
