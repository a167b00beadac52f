"""What a connector is: the protocol of one configured connection, and the spec a plugin registers.

A connector is split three ways: the plugin (a module with hook implementations that registers a
:class:`ConnectorSpec`), one configured :class:`Connection` to one site or account, and a thin
client that is the only code touching the network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from escalier.core.model import Action, Ticket

__all__ = ["ActionResult", "Connection", "ConnectorSpec", "RateLimit", "RawEvent"]


@dataclass(frozen=True, slots=True)
class RawEvent:
    """A delivery as it was received and stored, before any connector parsed it."""

    source: str
    instance: str
    body: bytes
    headers: Mapping[str, str]
    received_at: datetime
    delivery_id: str | None = None
    event_type: str | None = None
    inbox_id: int | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """What an upstream said about its remaining write budget."""

    limit: int | None = None
    remaining: int | None = None
    reset_after: float | None = None


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The outcome of applying an action; ``applied`` is False when it was already there."""

    applied: bool
    detail: str = ""
    rate_limit: RateLimit | None = None


@runtime_checkable
class Connection(Protocol):
    """One configured connection to one upstream site, account or mailbox."""

    system: str
    instance: str

    def apply(self, action: Action) -> ActionResult:
        """Apply ``action`` upstream exactly once in effect: re-applying a done action is a no-op."""
        ...

    def fetch_ticket(self, ticket_id: str) -> Ticket:
        """The ticket as the upstream describes it now."""
        ...

    def close(self) -> None:
        """Release sessions and sockets."""
        ...


@dataclass(frozen=True)
class ConnectorSpec:
    """A connector as a plugin registers it.

    ``config_model`` validates the plugin's section of the policy file (``connectors.<name>``);
    ``target_model`` validates a tier's target in this system (``tiers[].targets.<name>``);
    ``connect`` builds a :class:`Connection` from a validated config, an instance name and the
    environment that secrets are read from; ``check_target(config, target, people)`` returns
    ``(path, message)`` pairs for a target that names what the config does not define (an unknown
    group, a person missing from ``people``).
    """

    name: str
    title: str
    config_model: type[BaseModel]
    target_model: type[BaseModel]
    connect: Callable[[Any, str, Mapping[str, str]], Connection] | None = None
    check_target: Callable[[Any, Any, Mapping[str, Any]], list[tuple[str, str]]] | None = field(
        default=None
    )
