"""Build hook: the decision engine's hot modules are compiled with Cython when that is possible.

They stay plain Python modules. Compiled, the same source runs about a third faster; without
Cython or a C compiler, or with ``ESCALIER_PURE_PYTHON=1`` in the environment at install time,
they are installed and run as source, with the same behaviour.

Each compiled module is built from a copy of its source with one check appended: on import it
compares its source's hash with the file beside it and refuses to load if they differ, so an
edited ``core/engine.py`` is never shadowed by a compiled older one (rebuild with
``pip install -e .``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
# (module, source): the modules a decision spends its time in. escalier/compiled.py names the
# same modules and the same variable for run time; this file cannot import the package it builds.
COMPILED = (
    ("escalier.core.engine", "core/engine.py"),
    ("escalier.core.calendar", "core/calendar.py"),
    ("escalier.core.clocks", "core/clocks.py"),
)
# Safe for any Python code: they change neither arithmetic nor error behaviour. binding=False
# makes the module's functions C functions (no __code__, no signature to introspect), which
# nothing asks of these modules and which makes every call cheaper.
DIRECTIVES = {"language_level": 3, "binding": False}
PURE_PYTHON = "ESCALIER_PURE_PYTHON"

_CHECK = '''

# --- appended to the compiled copy by setup.py ---
def _refuse_if_stale(expected: str = "{digest}") -> None:
    import hashlib as _hashlib
    import os as _os

    source = _os.path.join(_os.path.dirname(__file__), "{name}")
    try:
        with open(source, "rb") as file:
            digest = _hashlib.sha256(file.read()).hexdigest()
    except OSError:  # installed without its source: nothing to be stale against
        return
    if digest != expected:
        raise ImportError(
            f"{{__file__}} was compiled from another version of {{source}}; rebuild it "
            "(pip install -e .) or delete it to run the source"
        )


_refuse_if_stale()
del _refuse_if_stale
'''


def _extensions() -> list[Extension]:
    if os.environ.get(PURE_PYTHON):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    copies = HERE / "build" / "cython"
    modules = []
    for name, source in COMPILED:
        original = (HERE / source).read_bytes()
        copy = copies / source
        copy.parent.mkdir(parents=True, exist_ok=True)
        text = original.decode("utf-8") + _CHECK.format(
            digest=hashlib.sha256(original).hexdigest(), name=Path(source).name
        )
        # Rewritten only when it changes, so that an unchanged module is not compiled again.
        if not copy.exists() or copy.read_text("utf-8") != text:
            copy.write_text(text, "utf-8")
        modules.append(Extension(name, [str(copy.relative_to(HERE))]))
    return cythonize(
        modules, compiler_directives=DIRECTIVES, build_dir=str(copies / "c"), quiet=True
    )


class OptionalBuildExt(build_ext):
    """Compile in parallel; if a module does not compile, install it as plain Python."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, or no Python headers
            self.warn(f"the engine is not compiled ({exc}); it runs as plain Python")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self.warn(f"{ext.name} is not compiled ({exc}); it runs as plain Python")


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
