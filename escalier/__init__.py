"""Escalier: a disciplined escalation process for the ticketing systems support teams already use."""

# Before anything imports the engine: ESCALIER_PURE_PYTHON=1 selects its source (see compiled.py).
from escalier import compiled as _compiled  # noqa: F401

__version__ = "0.1.0"

__all__ = ["__version__"]
