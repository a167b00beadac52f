"""The runtime: the worker that decides and applies, its retry policy, health, and CLI operations."""

from escalier.runtime.retry import RetrySettings
from escalier.runtime.worker import Pass, Worker

__all__ = ["Pass", "RetrySettings", "Worker"]
