"""Lazy re-exports: a package's public names imported on first use, so `import gcnn` stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, exports: dict[str, str], namespace: dict) -> Callable[[str], object]:
    """A module-level __getattr__ for `package` that imports `exports[name]` when `name` is first
    asked for and keeps the value in `namespace` (the package's globals), so it is found directly
    from then on."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
