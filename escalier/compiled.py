"""Which build of the decision engine runs: compiled with Cython, or its plain Python source.

``pip install`` compiles :data:`MODULES` when Cython and a C compiler are at hand (see setup.py);
the source is the same either way. ``ESCALIER_PURE_PYTHON=1`` in the environment skips the
compiling at install time and, at run time, makes Escalier import the source even where compiled
modules are installed: for debugging with a Python debugger or profiler, and to compare the two.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["MODULES", "ENVIRONMENT_VARIABLE", "is_compiled", "prefer_source"]

# setup.py compiles these and reads the same variable at install time: keep the two in step.
MODULES = ("escalier.core.engine", "escalier.core.calendar", "escalier.core.clocks")
ENVIRONMENT_VARIABLE = "ESCALIER_PURE_PYTHON"


def is_compiled() -> bool:
    """True if the engine that runs (or would be imported) is a compiled module."""
    module = sys.modules.get(MODULES[0])
    if module is not None:
        origin = getattr(module, "__file__", "") or ""
    else:
        spec = importlib.util.find_spec(MODULES[0])
        origin = (spec.origin or "") if spec is not None else ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds :data:`MODULES` as the ``.py`` files of their package, never as extensions."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001 - the finder protocol
        if name not in MODULES or not path:
            return None
        for folder in path:
            source = Path(folder) / f"{name.rpartition('.')[2]}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(name, source)
        return None


def prefer_source() -> None:
    """Import :data:`MODULES` from source from now on (they must not be imported yet)."""
    loaded = [name for name in MODULES if name in sys.modules]
    if loaded:
        raise RuntimeError(f"already imported: {', '.join(loaded)}")
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


if os.environ.get(ENVIRONMENT_VARIABLE):
    prefer_source()
