"""The model families, registered once: every ``Family`` subclass in a module of this package.

Adding a family is adding a module here (plus one adapter per host: ``ecad_core/diffusers/adapters/`` and
``nodes/adapters/``); layouts, ECAD's reference format, the cost model, model-file detection, the schedule
library's labels, the preview and the search's seeds all read it from here. See docs/architecture.md,
"How to add a model family".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._registry import Registry
from .base import DEFAULT_COLOR, Family, Variant, count_blocks, timestep_embedding_macs

log = logging.getLogger("ecad")
_classes = Registry(__name__, Family)
_lock = threading.Lock()
_state: dict[str, dict] = {}


def _tables() -> dict[str, dict]:
    with _lock:
        if not _state:
            fams: dict[str, Family] = {}
            variants: dict[str, tuple[Family, Variant]] = {}
            for cls in _classes.classes():
                f = cls()
                if f.name in fams:  # the first by order wins
                    log.error("ECAD: model family %r of %s is defined twice; skipped", f.name, cls.__module__)
                    continue
                fams[f.name] = f
                for v in f.variants:
                    variants.setdefault(v.name, (f, v))
            _state.update(families=fams, variants=variants)
        return _state


def refresh() -> None:
    """Discover the family modules again (after a test extended this package's ``__path__``)."""
    with _lock:
        _state.clear()
    _classes.refresh()


def registered() -> list[Family]:
    """Every family, in detection order."""
    return list(_tables()["families"].values())


def names() -> list[str]:
    return sorted(_tables()["families"])


def find(name: object) -> Family | None:
    return _tables()["families"].get(name) if isinstance(name, str) else None


def get(name: object) -> Family:
    """The family called ``name``; ValueError naming the known ones if there is none."""
    f = find(name)
    if f is None:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(names())}")
    return f


def variant(name: object) -> tuple[Family, Variant] | None:
    """(family, variant) of a schedule's model hint (``pixart-sigma``), None if no family declares it."""
    return _tables()["variants"].get(name) if isinstance(name, str) else None


def variants() -> list[tuple[Family, Variant]]:
    return list(_tables()["variants"].values())


class LiveView(Mapping):
    """A read-only mapping made by ``table()`` at each use, so that it follows the registry (a table of the
    families or variants, e.g. ``schedule.FAMILIES``, ``costs.ARCHS``)."""

    def __init__(self, table: Callable[[], Mapping[str, Any]]):
        self._table = table

    def __getitem__(self, key: str) -> Any:
        return self._table()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


def family_of_model(model: str) -> str:
    """The family a model hint belongs to: its family's name if declared, else the hint's first word."""
    found = variant(model)
    return found[0].name if found else model.split("-")[0]


def model_label(model: str | None, family: str) -> str:
    """How the library and the Load node name a schedule's model: ``PixArt-Σ``, else the family name."""
    found = variant(model)
    return found[1].label if found else family


__all__ = [
    "DEFAULT_COLOR",
    "Family",
    "LiveView",
    "Variant",
    "count_blocks",
    "family_of_model",
    "find",
    "get",
    "model_label",
    "names",
    "refresh",
    "registered",
    "timestep_embedding_macs",
    "variant",
    "variants",
]
