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

from escalier.core.errors import ConnectorError
from escalier.core.model import Action, Ticket, TicketEvent

__all__ = [
    "ActionBatch",
    "ActionResult",
    "Changes",
    "Connection",
    "ConnectorSpec",
    "DeliverySkipped",
    "RateLimit",
    "RawEvent",
]


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
    """The outcome of applying an action; ``applied`` is False when it was already there.

    In a batch, an action that failed while others of the batch landed has ``error`` set: the
    worker retries it (a :class:`~escalier.core.errors.TransientError`) or makes it a dead letter,
    and never sends the ones that landed again. ``calls`` says how many upstream writes the
    action took, so that a connector whose one hook call makes several requests spends as many
    write tokens; a hook call spends one token at least.
    """

    applied: bool
    detail: str = ""
    rate_limit: RateLimit | None = None
    error: ConnectorError | None = None
    # Upstream write requests the action took (one shared by several actions counts on one of
    # them); 0 when not reported. The worker spends a write token per request it is told of.
    calls: int = 0


@dataclass(frozen=True, slots=True)
class ActionBatch:
    """The ready actions of one ticket on one connection, in the order the engine issued them.

    ``maybe_applied`` holds the keys of actions an earlier attempt may have reached the upstream
    with (a timeout, a crash before the outbox recorded the outcome): the connector checks those
    upstream before writing them again; the others it writes without a look. ``ticket`` is the
    ticket as the escalation last saw it (a mail thread's addresses and message ids, say).
    """

    system: str
    instance: str
    ticket_id: str
    actions: tuple[Action, ...]
    maybe_applied: frozenset[str] = frozenset()
    ticket: Ticket | None = None


@dataclass(frozen=True, slots=True)
class Changes:
    """What a connector found changed upstream since a cursor, and the cursor to ask with next."""

    events: tuple[TicketEvent, ...]
    cursor: str | None
    more: bool = False
    stored: int = 0  # deliveries the look stored in the inbox instead, for the next inbox pass


class DeliverySkipped(Exception):
    """A delivery carries nothing to act on; ``kind`` names why (``auto_reply``, ``bounce``,
    ``unsupported_event``, ``own_change``, ``out_of_scope``...), ``reason`` says it in a sentence.

    Raised by a parser instead of returning an empty list when it can say why, so that
    ``escalier parse`` and the worker's log can tell the admin.
    """

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


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

    def check(self) -> str:
        """One cheap authenticated read; a sentence of what was found (who we are, which site).

        :raises ConnectorError: when the upstream cannot be reached or refuses the credentials.
        """
        ...

    def close(self) -> None:
        """Release sessions and sockets."""
        ...


@dataclass(frozen=True)
class ConnectorSpec:
    """A connector as a plugin registers it.

    ``config_model`` validates the plugin's section of the policy file (``connectors.<name>``);
    ``target_model`` validates a tier's target in this system (``tiers[].targets.<name>``);
    ``connect(config, instance, environ, people)`` builds a :class:`Connection` from a validated
    config, an instance name, the environment that secrets are read from and the policy's people
    (to turn a target's person into this system's user id); it makes no network call, and raises
    an :class:`~escalier.core.errors.EscalierError` whose message names a missing environment
    variable or a setting it cannot use; ``check_target(config, target, people)`` returns
    ``(path, message)`` pairs for a target that names what the config does not define (an unknown
    group, a person missing from ``people``); ``sandbox`` is the class of the connector's sandbox
    server, which ``escalier sandbox NAME`` starts: a :class:`escalier.connectors._sandbox.Sandbox`
    (HTTP), or any class with ``serve(*, out) -> int``, such as the mail sandbox.

    A connection that needs the store (the mail connector stores the messages it reads into the
    inbox) may offer ``attach_store(engine)``; the worker calls it before its first pass.
    """

    name: str
    title: str
    config_model: type[BaseModel]
    target_model: type[BaseModel]
    connect: Callable[[Any, str, Mapping[str, str], Mapping[str, Any]], Connection] | None = None
    check_target: Callable[[Any, Any, Mapping[str, Any]], list[tuple[str, str]]] | None = field(
        default=None
    )
    sandbox: type | None = None
