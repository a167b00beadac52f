"""The one error tree of Escalier.

::

    EscalierError
     +-- ConfigError            the policy file is unreadable or invalid (carries every problem)
     +-- PluginError            a plugin is broken or misregistered
     +-- StoreError             the store cannot be reached or refused a write
     +-- PayloadError           a delivery no connector can read (a shape we do not know)
     +-- ConnectorError         an upstream system refused or failed an action
          +-- AuthError          credentials rejected (401/403); retrying will not help
          +-- NotFoundError      the ticket, user or group does not exist upstream (404)
          +-- RejectedError      the request was understood and refused (400, 409, 422)
          +-- TransientError     worth retrying: 429, 5xx, timeouts, dropped connections;
                                 carries ``retry_after`` in seconds when the upstream said so

Connectors translate their library's exceptions at their boundary with ``raise ... from exc``.
No error carries a secret: messages name the system and the object, never a token.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AuthError",
    "ConfigError",
    "ConfigProblem",
    "ConnectorError",
    "EscalierError",
    "NotFoundError",
    "PayloadError",
    "PluginError",
    "RejectedError",
    "StoreError",
    "TransientError",
]


class EscalierError(Exception):
    """Base of every error Escalier raises on purpose."""


@dataclass(frozen=True, order=True)
class ConfigProblem:
    """One problem in a configuration file, located as precisely as the file allows."""

    file: str
    line: int | None
    path: str
    message: str
    hint: str | None = None
    severity: str = "error"

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}" if self.line else self.file]
        if self.severity != "error":
            parts.append(self.severity)
        if self.path:
            parts.append(self.path)
        text = ": ".join([*parts, self.message])
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(EscalierError):
    """The configuration is invalid; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


class PluginError(EscalierError):
    """A plugin failed to load, or broke the contract of a hook."""


class StoreError(EscalierError):
    """The store could not be reached or could not commit."""


class PayloadError(EscalierError):
    """A delivery that cannot be read; the message says what is wrong with it, never a stack."""


class ConnectorError(EscalierError):
    """An upstream system failed or refused an action."""

    def __init__(self, message: str, *, system: str | None = None, status: int | None = None):
        super().__init__(message)
        self.system = system
        self.status = status


class AuthError(ConnectorError):
    """The upstream rejected our credentials; retrying will not help."""


class NotFoundError(ConnectorError):
    """The upstream object does not exist."""


class RejectedError(ConnectorError):
    """The upstream understood the request and refused it."""


class TransientError(ConnectorError):
    """A failure worth retrying; ``retry_after`` is the upstream's own hint in seconds, if any."""

    def __init__(
        self,
        message: str,
        *,
        system: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, system=system, status=status)
        self.retry_after = retry_after
