"""Name -> class registries for methods and collectors, filled by the modules of a package and by a Python
entry-point group, so that a new method or collector is one new file (or one installed plugin)."""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points


class Registry:
    def __init__(self, kind: str, package: str, entry_group: str):
        self.kind, self.package, self.entry_group = kind, package, entry_group
        self._classes: dict[str, type] = {}
        self._loaded = False

    def register(self, name: str):
        """Class decorator: `@register_method("ligo")` sets `cls.name` and makes the class findable."""

        def decorator(cls: type) -> type:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorator

    def classes(self) -> dict[str, type]:
        """Every registered class by name, after importing the package's modules and the entry points once."""
        if not self._loaded:
            self._loaded = True
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
            for entry in entry_points(group=self.entry_group):
                entry.load()
        return self._classes
