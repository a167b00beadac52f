"""Escalier: a disciplined escalation process for the ticketing systems support teams already use."""

__version__ = "0.1.0"

__all__ = ["__version__"]
