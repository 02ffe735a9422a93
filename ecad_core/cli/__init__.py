"""Command line: ``python -m ecad_core {info,convert,macs,demo,evolve,run,eval} ...`` (also the ``ecad`` script).

One module per group of commands, each with ``register(subparsers)``: ``schedule`` (info, convert, macs),
``demo``, ``search`` (evolve), ``run``, ``evaluate`` (eval). Building the parser imports no torch; a command
imports what it needs when it runs. Bad input exits with status 2 and one line on stderr that says what is wrong.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import EcadError
from . import demo, evaluate, run, schedule, search


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ecad_core", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for group in (schedule, demo, search, run, evaluate):
        group.register(sub)
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
