"""Hard-link the files of one tree that are byte-identical to the same path in another (same filesystem).

scripts/setup_env.sh runs it on the two venvs: ComfyUI 0.33's (.cache/comfy033/venv) installs the same torch
wheels as .venv, about 5.7 GB twice over. Linked files stay plain files to Python; pip replaces rather than
rewrites a file it upgrades, so one venv changing never changes the other.

    python scripts/link_identical.py SOURCE_DIR TARGET_DIR   # TARGET_DIR's duplicates become links to SOURCE_DIR's
"""

from __future__ import annotations

import filecmp
import os
import stat
import sys
from pathlib import Path

MIN_BYTES = 64 * 1024  # smaller files save little and are many


def link_identical(source: Path, target: Path, min_bytes: int = MIN_BYTES) -> tuple[int, int]:
    """Replace each regular file under ``target`` whose twin under ``source`` has the same bytes by a hard link to
    the twin; return (files linked, bytes saved). Already-linked files, symlinks, and files whose bytes or modes
    differ are left."""
    linked = saved = 0
    for root, _dirs, files in os.walk(target):
        for name in files:
            t = Path(root) / name
            s = source / t.relative_to(target)
            try:
                ts, ss = t.lstat(), s.lstat()
            except FileNotFoundError:
                continue
            if not (stat.S_ISREG(ts.st_mode) and stat.S_ISREG(ss.st_mode)):  # lstat: a symlink is not regular
                continue
            if (ts.st_dev, ts.st_ino) == (ss.st_dev, ss.st_ino) or ts.st_size != ss.st_size or ts.st_size < min_bytes:
                continue
            # a link shares one mode: files whose modes differ stay apart
            if ts.st_dev != ss.st_dev or (ts.st_mode ^ ss.st_mode) & 0o7777:
                continue
            if not filecmp.cmp(s, t, shallow=False):
                continue
            tmp = t.with_name(f".{name}.link{os.getpid()}")
            os.link(s, tmp)
            os.replace(tmp, t)
            linked += 1
            saved += ts.st_size
    return linked, saved


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = (Path(a) for a in argv)
    for d in (source, target):
        if not d.is_dir():
            print(f"link_identical: {d} is not a folder", file=sys.stderr)
            return 2
    linked, saved = link_identical(source, target)
    print(f"[link_identical] {linked} files of {target} linked to {source}: {saved / 2**30:.2f} GiB saved")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
