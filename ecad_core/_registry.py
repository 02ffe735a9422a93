"""Plug-in discovery: the subclasses of a base class that the modules of a package define, found with pkgutil.

The model families (``ecad_core.families``), the diffusers adapters (``ecad_core.diffusers.adapters``) and the
ComfyUI adapters (``nodes.adapters``) are registered this way, so adding one is adding a module: no central list
to edit. The package's ``__path__`` is read at each discovery, so a directory appended to it (a test's toy
family) is searched too. A module that fails to import is logged and skipped: it costs its own entries only.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
import threading
from typing import Generic, TypeVar

log = logging.getLogger("ecad")
T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Every subclass of ``base`` defined in a module of ``package`` (except ``skip``), ordered by their
    ``order`` attribute, then name. Discovered at first use; ``refresh()`` discovers again."""

    def __init__(self, package: str, base: T, skip: tuple[str, ...] = ("base",)):
        self.package, self.base, self.skip = package, base, skip
        self._found: list[T] | None = None
        self._lock = threading.Lock()

    def classes(self) -> list[T]:
        with self._lock:
            if self._found is None:
                self._found = self._discover()
            return list(self._found)

    def refresh(self) -> None:
        with self._lock:
            self._found = None

    def _discover(self) -> list[T]:
        found: list[T] = []
        path = getattr(sys.modules[self.package], "__path__", [])
        for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
            if info.name in self.skip or info.name.startswith("_"):
                continue
            name = f"{self.package}.{info.name}"
            try:
                module = importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - one broken plug-in module costs its own entries only
                log.error("ECAD: cannot load %s (%s: %s); skipped", name, type(e).__name__, e)
                continue
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, self.base)
                    and obj is not self.base
                    and obj.__module__ == module.__name__
                    and not vars(obj).get("abstract", False)
                ):
                    found.append(obj)  # type: ignore[arg-type]
        found.sort(key=lambda c: (getattr(c, "order", 50), c.__name__))
        return found
