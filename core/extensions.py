"""The specs plugins register through the ``register_*`` hooks, other than connectors."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from escalier.core.errors import EscalierError

__all__ = ["ChannelSpec", "CommentTemplate", "CriterionSpec", "WebhookRejected", "WebhookSpec"]


@dataclass(frozen=True)
class ChannelSpec:
    """A kind of notification channel; ``send`` delivers one message to its recipients."""

    kind: str
    options_model: type[BaseModel]
    send: Callable[[Any, Sequence[str], str, str], None] | None = None


@dataclass(frozen=True)
class CommentTemplate:
    """A named comment; ``text`` uses ``{placeholders}`` filled by the engine."""

    name: str
    text: str
    public: bool = False


@dataclass(frozen=True)
class CriterionSpec:
    """An extra criterion: ``matches(ticket, state, now, options)`` is a pure predicate."""

    name: str
    options_model: type[BaseModel]
    matches: Callable[[Any, Any, datetime, Any], bool]
    describe: Callable[[Any], str] | None = None


class WebhookRejected(EscalierError):
    """A delivery failed a check; ``code`` is stable for clients and metrics, ``status`` the HTTP answer."""

    def __init__(self, code: str, reason: str, *, status: int = 401):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class OwnIdentity:
    """How Escalier recognises its own changes when they come back from one upstream instance.

    ``user_ids`` are Escalier's upstream ids (a Jira accountId or username, a Zendesk user id, as
    strings); ``marker`` is the text Escalier puts in every comment it writes; a comment line that
    starts with ``key_prefix`` (``escalier:action=...``) is a machine-readable key Escalier wrote.
    """

    user_ids: frozenset[str] = frozenset()
    marker: str = "[escalier]"
    key_prefix: str = "escalier:"

    def is_own_user(self, *candidates: object) -> bool:
        """True when any candidate id (a string or an integer) is one of Escalier's own."""
        return any(
            isinstance(c, (str, int)) and not isinstance(c, bool) and str(c) in self.user_ids
            for c in candidates
        )

    def is_marked(self, text: object) -> bool:
        """True when ``text`` carries Escalier's marker or starts a line with its key prefix."""
        if not isinstance(text, str) or not text:
            return False
        if self.marker and self.marker in text:
            return True
        return bool(self.key_prefix) and any(
            line.lstrip().startswith(self.key_prefix) for line in text.splitlines()
        )


@dataclass(frozen=True)
class WebhookSpec:
    """A webhook endpoint a connector contributes to the receiver.

    The receiver mounts it at ``/webhooks/<name>`` and ``/webhooks/<name>/<instance>`` (and
    ``/webhooks/<name>/<instance>/<token>`` when ``token_in_path``) and calls, in this order:

    - ``verify(headers, body, secrets, now)``: authenticate the raw body against any of the
      instance's secrets (current first, previous during rotation); raise
      ``escalier.webhooks.Rejected`` on failure; return the time the sender signed, if the
      signature covers one, so the receiver can refuse replays outside its tolerance, else None;
    - ``sent_at(headers, payload)``: the unsigned send time the payload claims (Jira's epoch-ms
      ``timestamp``), checked against the receiver's payload age limit; None when unknown;
    - ``delivery_id(headers, payload)``: the id that stays the same when the sender retries;
    - ``event_type(headers, payload)`` and ``handles(event_type)``: what happened, and whether
      Escalier acts on it;
    - ``is_own_change(payload, identity)``: whether Escalier itself made this change upstream,
      given an :class:`OwnIdentity`.

    Every function is pure and must accept any JSON value as ``payload`` without raising.
    ``content_types`` lists the media types the endpoint accepts.
    """

    name: str
    verify: Callable[[Mapping[str, str], bytes, Sequence[str], datetime], datetime | None]
    delivery_id: Callable[[Mapping[str, str], Any], str | None]
    event_type: Callable[[Mapping[str, str], Any], str | None]
    handles: Callable[[str | None], bool]
    is_own_change: Callable[[Any, OwnIdentity], bool] | None = None
    sent_at: Callable[[Mapping[str, str], Any], datetime | None] | None = None
    content_types: tuple[str, ...] = ("application/json",)
    token_in_path: bool = False
