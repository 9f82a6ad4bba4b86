"""Importing real fairseq where it is installed (tests and benchmarks compare against it).

fairseq imports every task at package import; two of them (audio classification, sentence
prediction) import scikit-learn and scipy, which fconv never uses. Where those are absent, empty
stand-ins are registered so that `import fairseq` works without them (CI installs fairseq-fixed
with --no-deps and only its pure-Python dependencies). Nothing here is needed to convert.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import sys
import types
import warnings


class _Absent(types.ModuleType):
    """An empty stand-in module: any attribute is a function that says it is not installed."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name} is not installed")

        return missing


def import_fairseq(*modules: str) -> types.ModuleType | None:
    """The fairseq package with `modules` (e.g. "fairseq.checkpoint_utils") imported, or None
    where fairseq is not installed."""
    if importlib.util.find_spec("fairseq") is None:
        return None
    for package, submodule in (("sklearn", "metrics"), ("scipy", "stats")):
        if package in sys.modules or importlib.util.find_spec(package) is not None:
            continue
        for name in (package, f"{package}.{submodule}"):
            module = _Absent(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            module.__path__ = []
            sys.modules[name] = module
    logging.getLogger("fairseq").setLevel(logging.ERROR)
    logging.getLogger("fairseq_cli").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            importlib.import_module(name)
    return sys.modules["fairseq"]
