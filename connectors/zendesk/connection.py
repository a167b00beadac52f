"""One configured connection to a Zendesk account: actions out, tickets and changes in.

This is the only code of the Zendesk connector that touches the network. It builds a ``zenpy``
client on first use and makes every request through it:

- with a session of our own, so that ``zenpy`` mounts none of its retrying adapters (the
  runtime's retry policy is the only one), every write carries ``X-Escalier-Action-Keys``, and
  the connection can read each answer's status and rate-limit headers;
- with ``ratelimit_budget=0``: on a 429 with ``Retry-After``, ``zenpy`` would otherwise sleep in
  our thread and ask again; with no budget it raises at once, and the 429 becomes a
  :class:`~escalier.core.errors.TransientError` carrying ``retry_after`` for the scheduler;
- with its object cache off: a cached ticket or job status would hide Zendesk's current one;
- with an explicit timeout; and, when the config says ``url`` (a sandbox, a proxy), with that
  origin instead of ``https://<subdomain>.zendesk.com`` (``zenpy``'s ``domain`` argument; its
  ``ZENPY_FORCE_*`` environment variables would redirect every client of the process).

**Call economy.** An escalation step costs **one** ``PUT /api/v2/tickets/{id}.json``: tags are
added with ``additional_tags`` and removed with ``remove_tags`` (never the full ``tags`` list, so
a tag a person added meanwhile survives), the tier's group and assignee, the priority, a status,
followers and the comment (public or internal) go in the same update. When the connection read
the ticket in the last 30 seconds (or the previous update's answer carried it), the update says
``safe_update`` with that ``updated_stamp``; on a 409 conflict it reads the ticket once and tries
once more within the call. An action an earlier attempt may have applied (``maybe_applied``)
costs a read of the ticket (and of its comments when a comment may have landed) first, and only
what is not there yet is written. Zendesk has no notification endpoint: a ``notify`` action is
folded into the update as an internal note when the update goes out anyway and carries no comment
of its own (Zendesk takes one comment per update); otherwise it is reported done with the detail
"notification channel not configured for zendesk" and nothing is sent. A sweep over many
tickets (:meth:`ZendeskConnection.apply_many`) uses ``PUT /tickets/update_many.json``, up to 100
tickets a job, and follows each job's status: a job that stops part way, or reports no result
for a ticket, fails those tickets, never passes them as applied.

Every comment ends with a line ``escalier:action=<key>``, so an action that may have landed
before a crash or a timeout is found upstream and not applied twice.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from escalier.connectors._values import seconds_until as _seconds_until
from escalier.connectors.zendesk import events
from escalier.connectors.zendesk.config import ZendeskAccount, ZendeskTarget
from escalier.core.connector import ActionBatch, ActionResult, Changes, RateLimit
from escalier.core.errors import (
    AuthError,
    ConnectorError,
    EscalierError,
    NotFoundError,
    PayloadError,
    RejectedError,
    TransientError,
)
from escalier.core.model import Action, ActionKind, Ticket
from escalier.core.policy import Person
from pydantic import ValidationError
from zenpy import Zenpy
from zenpy.lib.api_objects import Ticket as ZenpyTicket
from zenpy.lib.exception import APIException, RatelimitBudgetExceeded, ZenpyException

__all__ = ["ACTION_KEYS_HEADER", "BULK_SIZE", "KEY_LINE_PREFIX", "NOT_CONFIGURED", "ZendeskConnection"]

log = logging.getLogger("escalier.connectors.zendesk")

SYSTEM = "zendesk"
ACTION_KEYS_HEADER = "X-Escalier-Action-Keys"
KEY_LINE_PREFIX = "escalier:action="
NOT_CONFIGURED = "notification channel not configured for zendesk"
CACHE_SECONDS = 30.0
# Without a cursor, reconciliation looks this far back from ``now``.
LOOK_BACK = timedelta(hours=1)
# Zendesk's own page size of the export; zenpy sends per_page only with a start_time, so the
# pages after the first are of this size anyway.
EXPORT_PAGE = 1000
# Zendesk's bulk update takes at most 100 tickets a job.
BULK_SIZE = 100
# Tickets a GET tickets/show_many returns at most.
SHOW_MANY = 100
JOB_DONE = frozenset({"completed", "failed", "killed"})

_PAIR = re.compile(r"(\w+)\s*=\s*([\d.]+)")
_PRIORITIES = frozenset({"low", "normal", "high", "urgent"})
_STATUSES = frozenset({"new", "open", "pending", "hold", "solved", "closed"})
_STATUS_WORDS = {
    "on hold": "hold", "on-hold": "hold", "on_hold": "hold", "resolved": "solved",
    "done": "solved",
}
_FOLDED = frozenset(
    {ActionKind.ADD_TAGS, ActionKind.REMOVE_TAGS, ActionKind.ASSIGN, ActionKind.SET_PRIORITY,
     ActionKind.TRANSITION, ActionKind.ADD_WATCHERS, ActionKind.COMMENT, ActionKind.NOTIFY}
)


# --- the session ------------------------------------------------------------------------------


class _Session(requests.Session):
    """``zenpy``'s session: names the action keys on writes, and keeps each thread's last answer."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        keys = getattr(self._local, "keys", None)
        if keys:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), ACTION_KEYS_HEADER: ",".join(keys)}
        response = super().request(method, url, *args, **kwargs)
        self._local.last = response
        return response

    @contextmanager
    def calling(self, keys: Sequence[str]) -> Iterator[None]:
        """Within the block, requests of this thread carry ``keys``; the last answer starts empty."""
        self._local.keys = list(keys)
        self._local.last = None
        try:
            yield
        finally:
            self._local.keys = None

    def last(self) -> requests.Response | None:
        """The answer to this thread's latest request, if it got one."""
        return getattr(self._local, "last", None)


# --- errors -------------------------------------------------------------------------------------


def _upstream_message(response: requests.Response | None) -> str:
    """Zendesk's own words: ``error``, ``description`` and each of ``details``' descriptions."""
    if response is None:
        return ""
    try:
        data = response.json()
    except ValueError:
        return " ".join((response.text or "").split())[:200]
    if not isinstance(data, dict):
        return ""
    parts: list[str] = []
    error = data.get("error")
    if isinstance(error, dict):  # OAuth and some older endpoints nest it
        error = error.get("title") or error.get("message")
    description = data.get("description")
    if isinstance(error, str) and error:
        parts.append(f"{error}: {description}" if isinstance(description, str) else error)
    elif isinstance(description, str):
        parts.append(description)
    details = data.get("details")
    if isinstance(details, dict):
        for name, entries in details.items():
            for entry in entries if isinstance(entries, list) else [entries]:
                text = entry.get("description") if isinstance(entry, dict) else entry
                if isinstance(text, str) and text:
                    parts.append(f"{name}: {text}")
    if not parts and isinstance(data.get("errors"), list):
        parts.extend(str(e.get("title") or e.get("detail") or e) for e in data["errors"][:5])
    return "; ".join(parts)[:500]


def _rate_limit(response: requests.Response | None) -> RateLimit | None:
    """What the answer's rate-limit headers say about the remaining budget, if anything.

    Zendesk sends the account's ``X-Rate-Limit``/``X-Rate-Limit-Remaining``, and for ticket
    updates the endpoint's own ``ratelimit-limit``/``-remaining``/``-reset``; the tighter wins.
    """
    if response is None:
        return None
    headers = response.headers

    def number(*names: str) -> int | None:
        for name in names:
            try:
                return int(float(headers[name]))
            except (KeyError, ValueError):
                continue
        return None

    budgets = [
        (number("X-Rate-Limit", "X-RateLimit-Limit"),
         number("X-Rate-Limit-Remaining", "X-RateLimit-Remaining"), None),
        (number("ratelimit-limit"), number("ratelimit-remaining"),
         _seconds_until(headers.get("ratelimit-reset"))),
    ]
    # An endpoint's own budget: "Zendesk-RateLimit-Tickets-Update: total=100; remaining=99;
    # resets=42" (the Update Ticket endpoint's 100 a minute, shared with the agents).
    for name, value in headers.items():
        if name.lower().startswith(("zendesk-ratelimit-", "zendesk-rate-limit-")):
            parts = dict(_PAIR.findall(value.lower()))
            budgets.append((_int(parts.get("total")), _int(parts.get("remaining")),
                            _seconds_until(parts.get("resets"))))
    limit = remaining = reset = None
    for total, left, resets in budgets:
        if left is not None and (remaining is None or left < remaining):
            limit, remaining, reset = total, left, resets
        elif remaining is None and total is not None and limit is None:
            limit = total
    retry = _seconds_until(headers.get("Retry-After"))
    reset = retry if retry is not None else reset
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimit(limit=limit, remaining=remaining, reset_after=reset)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def _translate(
    exc: BaseException,
    response: requests.Response | None,
    *,
    name: str,
    what: str,
    timeout: float | None = None,
) -> ConnectorError:
    """The one place where ``zenpy``'s and ``requests``' exceptions become ours.

    ``response`` is the last answer the call got (``zenpy`` keeps none on some exceptions);
    neither the message nor anything it quotes carries a credential.
    """
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, requests.Timeout):
        after = f" after {timeout:g}s" if timeout else ""
        return TransientError(f"{name}: {what} timed out{after}", system=SYSTEM)
    if isinstance(exc, requests.ConnectionError):
        # The exception's text can quote the URL; the class name says enough.
        return TransientError(
            f"{name}: {what} failed: cannot reach the account ({type(exc).__name__})",
            system=SYSTEM,
        )
    # A response is falsy when it is an error: compare with None.
    own = getattr(exc, "response", None)
    response = own if own is not None else response
    status = response.status_code if response is not None else None
    if status is None or 200 <= status < 300:
        if isinstance(exc, RatelimitBudgetExceeded):
            return TransientError(f"{name}: {what} was rate limited (429)", system=SYSTEM,
                                  status=429)
        if isinstance(exc, ValueError):
            return ConnectorError(f"{name}: {what} answered with a body that is not JSON",
                                  system=SYSTEM)
        if isinstance(exc, (KeyError, TypeError, AttributeError)):
            return ConnectorError(f"{name}: {what} answered in a shape zenpy cannot read "
                                  f"({type(exc).__name__})", system=SYSTEM)
        return ConnectorError(f"{name}: {what} failed ({type(exc).__name__})", system=SYSTEM)
    said = _upstream_message(response)
    suffix = f": {said}" if said else ""
    if status == 429 or status == 408 or status >= 500:
        return TransientError(
            f"{name}: {what} answered {status}{suffix}", system=SYSTEM, status=status,
            retry_after=_seconds_until(response.headers.get("Retry-After")),
        )
    if status in (401, 403):
        return AuthError(f"{name}: {what} refused our credentials ({status}){suffix}",
                         system=SYSTEM, status=status)
    if status == 404:
        return NotFoundError(f"{name}: {what} found nothing (404){suffix}", system=SYSTEM,
                             status=status)
    return RejectedError(f"{name}: {what} was refused ({status}){suffix}", system=SYSTEM,
                         status=status)


# --- the plan of a batch ------------------------------------------------------------------------


@dataclass
class _Plan:
    """A batch as one ticket update: each effect, and which action asked for it."""

    tags: dict[str, tuple[bool, str]] = field(default_factory=dict)  # tag -> (add?, key)
    values: dict[str, tuple[Any, str]] = field(default_factory=dict)  # group_id... -> (value, key)
    followers: dict[int, str] = field(default_factory=dict)  # user id -> key
    # Zendesk takes one comment per update: comments of one visibility share it.
    comments: list[tuple[bool, list[Action]]] = field(default_factory=list)
    notes: list[Action] = field(default_factory=list)  # notify actions
    noted: set[str] = field(default_factory=set)  # notify keys folded into an internal note
    keys: list[str] = field(default_factory=list)  # every action planned, in order
    errors: dict[str, ConnectorError] = field(default_factory=dict)
    done: dict[str, ActionResult] = field(default_factory=dict)

    def comment(self, action: Action) -> None:
        """Add a comment to the update's comment of its visibility, or start one."""
        for public, actions in self.comments:
            if public == action.public:
                actions.append(action)
                return
        self.comments.append((action.public, [action]))

    def field_keys(self) -> set[str]:
        """The keys of the actions with a field in the update (comments aside)."""
        owners = {key for _, key in self.tags.values()} | {key for _, key in self.values.values()}
        return owners | set(self.followers.values())

    def fields_of(self, key: str, comments: Sequence[tuple[bool, list[Action]]] | None = None) -> list[str]:
        """What the update changes for one action."""
        found = []
        if any(k == key and add for add, k in self.tags.values()):
            found.append("tags added")
        if any(k == key and not add for add, k in self.tags.values()):
            found.append("tags removed")
        found += [name.removesuffix("_id") for name, (_, k) in self.values.items() if k == key]
        if key in self.followers.values():
            found.append("followers")
        entries = self.comments if comments is None else comments
        if any(a.key == key for _, actions in entries for a in actions):
            found.append("internal note" if key in self.noted else "comment")
        return found


def _comment_body(actions: Sequence[Action]) -> str:
    """One comment for several actions: each body, each with its key line."""
    return "\n\n".join(_with_key(a.body, a.key) for a in actions)


def _has_key_line(body: Any, key: str) -> bool:
    if not isinstance(body, str):
        return False
    wanted = KEY_LINE_PREFIX + key
    return any(line.strip() == wanted for line in body.splitlines())


def _with_key(body: str | None, key: str) -> str:
    return f"{(body or '').rstrip()}\n\n{KEY_LINE_PREFIX}{key}"


# --- the connection -----------------------------------------------------------------------------


class ZendeskConnection:
    """One configured connection to one Zendesk account."""

    system = SYSTEM

    def __init__(
        self,
        site: ZendeskAccount,
        instance: str,
        environ: Mapping[str, str],
        people: Mapping[str, Person],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        job_wait: float = 60.0,
        job_poll: float = 0.5,
        export_page: int = EXPORT_PAGE,
    ):
        self.site = site
        self.instance = instance
        self.name = f"{SYSTEM}/{instance}"
        self._people = dict(people)
        self._by_email = {
            p.email.casefold(): p for p in self._people.values() if getattr(p, "email", None)
        }
        self._clock = clock
        self._sleep = sleep
        self._job_wait = job_wait
        self._job_poll = job_poll
        self._export_page = export_page
        secret = site.token if site.token is not None else site.oauth_token
        assert secret is not None  # the config insists on one of them
        try:
            self._secret = secret.reveal(environ)
        except KeyError:
            raise EscalierError(
                f"{self.name}: environment variable {secret.env} is not set"
            ) from None
        if not self._secret:
            raise EscalierError(f"{self.name}: environment variable {secret.env} is empty")
        self.url = (site.url or f"https://{site.subdomain}.zendesk.com").rstrip("/")
        parts = urlsplit(self.url)
        self._scheme = parts.scheme or "https"
        if site.url:
            # zenpy builds <subdomain>.<domain>: any dotted host splits into the two.
            if "." not in parts.netloc.split(":")[0]:
                raise EscalierError(
                    f"{self.name}: url {self.url} needs a dotted host (e.g. 127.0.0.1, not localhost)"
                )
            self._subdomain, _, self._domain = parts.netloc.partition(".")
        else:
            self._subdomain, self._domain = site.subdomain, "zendesk.com"
        self._client: Zenpy | None = None
        self._session: _Session | None = None
        self._lock = threading.Lock()
        self._tally = threading.local()  # write requests of the batch in hand, per thread
        # ticket id -> (valid until, ticket, the updated_at Zendesk sent, as sent)
        self._tickets: dict[str, tuple[float, Ticket, str | None]] = {}

    def __repr__(self) -> str:
        return f"ZendeskConnection({self.name}, {self.url})"

    # the client

    def _zenpy(self) -> tuple[Zenpy, _Session]:
        with self._lock:
            if self._client is None or self._session is None:
                session = _Session()
                credentials: dict[str, Any] = {"email": self.site.email}
                if self.site.token is not None:
                    credentials["token"] = self._secret
                else:
                    credentials["oauth_token"] = self._secret
                client = Zenpy(
                    subdomain=self._subdomain,
                    domain=self._domain,
                    session=session,
                    timeout=self.site.timeout_seconds,
                    ratelimit_budget=0,
                    disable_cache=True,
                    **credentials,
                )
                for api in (client.tickets, client.users, client.job_status):
                    api.protocol = self._scheme
                self._client, self._session = client, session
            return self._client, self._session

    def _call(
        self, what: str, call: Callable[[Zenpy], Any], *, keys: Sequence[str] = ()
    ) -> tuple[Any, requests.Response | None]:
        """One ``zenpy`` call; returns its result and the answer, or raises our error."""
        client, session = self._zenpy()
        with session.calling(keys):
            try:
                result = call(client)
            except (APIException, ZenpyException, requests.RequestException, ValueError,
                    KeyError, TypeError, AttributeError) as exc:
                # The last three: zenpy reading an answer of a shape it does not expect.
                raise _translate(
                    exc, session.last(), name=self.name, what=what,
                    timeout=self.site.timeout_seconds,
                ) from exc
            return result, session.last()

    def _json(self, what: str, response: requests.Response | None, key: str) -> Any:
        try:
            data = response.json() if response is not None else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or key not in data:
            raise ConnectorError(f"{self.name}: {what} answered without '{key}'", system=SYSTEM)
        return data[key]

    # reading

    def fetch_ticket(self, ticket_id: str, *, newer_than: datetime | None = None) -> Ticket:
        """The ticket as Zendesk describes it now; cached for about 30 seconds.

        ``newer_than`` is the update a delivery speaks of: a cached copy from before it is read
        again, so that a change is never decided on the ticket as it was before the change.
        """
        cached = self._cached(str(ticket_id))
        if cached is not None:
            seen = cached[0].updated_at
            if newer_than is None or (seen is not None and seen >= newer_than):
                return cached[0]
        return self._read(self._ticket_number(ticket_id))[0]

    def read_ahead(self, wanted: Mapping[str, datetime | None]) -> int:
        """Read into the cache, up to 100 a request, the tickets of ``wanted`` not cached new enough.

        ``wanted`` maps a ticket id to the update its delivery speaks of (as ``fetch_ticket``'s
        ``newer_than``). One ``GET tickets/show_many`` serves a pass's deliveries instead of one
        ``GET tickets/{id}`` each; a ticket it does not return (deleted) is left to
        ``fetch_ticket``. Returns how many tickets were read.
        """
        missing = []
        for ticket_id, newer_than in wanted.items():
            cached = self._cached(str(ticket_id))
            seen = cached[0].updated_at if cached is not None else None
            if cached is None or (newer_than is not None and (seen is None or seen < newer_than)):
                missing.append(self._ticket_number(ticket_id))
        read = 0
        for start in range(0, len(missing), SHOW_MANY):
            chunk = missing[start:start + SHOW_MANY]
            what = f"GET tickets/show_many ({len(chunk)} tickets)"
            _, response = self._call(what, lambda z, ids=chunk: _raw_get(z.tickets, ids=ids))
            found = self._json(what, response, "tickets")
            if not isinstance(found, list):
                raise ConnectorError(f"{self.name}: {what} answered without a list of tickets",
                                     system=SYSTEM)
            for ticket_json in found:
                if isinstance(ticket_json, Mapping):
                    self._remember(ticket_json)
                    read += 1
        return read

    def _cached(self, ticket_id: str) -> tuple[Ticket, str | None] | None:
        now = self._clock()
        with self._lock:
            for ident in [i for i, (until, _, _) in self._tickets.items() if until <= now]:
                del self._tickets[ident]
            found = self._tickets.get(ticket_id)
        return (found[1], found[2]) if found is not None else None

    def _remember(self, ticket_json: Mapping[str, Any]) -> tuple[Ticket, str | None]:
        try:
            ticket = events.ticket_from_api(ticket_json, self.site, self.instance)
        except PayloadError as exc:
            raise ConnectorError(f"{self.name}: Zendesk sent a ticket we cannot read: {exc}",
                                 system=SYSTEM) from exc
        stamp = ticket_json.get("updated_at")
        stamp = stamp if isinstance(stamp, str) else None
        with self._lock:
            self._tickets[ticket.id] = (self._clock() + CACHE_SECONDS, ticket, stamp)
        return ticket, stamp

    def _read(self, number: int) -> tuple[Ticket, str | None, Mapping[str, Any]]:
        what = f"GET tickets/{number}"
        _, response = self._call(what, lambda z: _raw_get(z.tickets, id=number))
        ticket_json = self._json(what, response, "ticket")
        ticket, stamp = self._remember(ticket_json)
        return ticket, stamp, ticket_json

    def _forget(self, ticket_id: str) -> None:
        with self._lock:
            self._tickets.pop(ticket_id, None)

    def _ticket_number(self, ticket_id: Any) -> int:
        text = str(ticket_id).strip()
        if not (text.isascii() and text.isdigit()):
            raise NotFoundError(f"{self.name}: '{text[:40]}' is not a Zendesk ticket id",
                                system=SYSTEM)
        return int(text)

    def _comment_bodies(self, number: int) -> list[str]:
        what = f"GET tickets/{number}/comments"

        def bodies(client: Zenpy) -> list[str]:
            found = []
            for comment in client.tickets.comments(ticket=number):
                body = getattr(comment, "body", None)
                if isinstance(body, str):
                    found.append(body)
            return found

        return self._call(what, bodies)[0]

    def check(self) -> str:
        """Read our own user (``GET users/me``); say which account and who we are."""
        what = "GET users/me"
        _, response = self._call(what, lambda z: z.users.me())
        me = self._json(what, response, "user")
        if not isinstance(me, dict) or me.get("id") in (None, 0):
            raise AuthError(f"{self.name}: {what} answered an anonymous user; the credentials "
                            "were not accepted", system=SYSTEM, status=401)
        who = me.get("name") or me.get("email") or "an unnamed user"
        text = f"Zendesk {self.url} as {who} (user {me.get('id')}, role {me.get('role')})"
        if me.get("role") not in ("agent", "admin"):
            text += "; but an end user cannot update tickets"
        own = self.site.service_user_id
        if own is not None and str(own) != str(me.get("id")):
            text += f"; but the policy's service_user_id is {own}"
        return text

    def changes_since(self, cursor: str | None, now: datetime) -> Changes:
        """Tickets changed since ``cursor`` (first: the last hour), a page of the cursor export."""
        state = _read_cursor(cursor)
        after = state.get("cursor")
        if after:
            what = "GET incremental/tickets/cursor"
            call = lambda z: z.tickets.incremental(cursor=after, per_page=self._export_page)
        else:
            start = int((now - LOOK_BACK).timestamp())
            what = f"GET incremental/tickets/cursor?start_time={start}"
            call = lambda z: z.tickets.incremental(start_time=start, per_page=self._export_page)
        _, response = self._call(what, call)
        tickets = self._json(what, response, "tickets")
        if not isinstance(tickets, list):
            raise ConnectorError(f"{self.name}: {what} answered tickets that are not a list",
                                 system=SYSTEM)
        assert response is not None  # _json read it
        page = response.json()
        found = []
        for ticket_json in tickets:
            try:
                found.extend(events.events_from_export(ticket_json, self.site, self.instance))
            except PayloadError as exc:
                log.warning("zendesk.changes.unreadable",
                            extra={"instance": self.instance, "error": str(exc)})
        next_cursor = page.get("after_cursor") or after
        more = page.get("end_of_stream") is False and bool(page.get("after_cursor"))
        log.info(
            "zendesk.changes.listed",
            extra={"instance": self.instance, "tickets": len(tickets),
                   "events": len(found), "more": more},
        )
        cursor_out = json.dumps({"cursor": next_cursor}) if next_cursor else cursor
        return Changes(events=tuple(found), cursor=cursor_out, more=more)

    # writing

    def apply(self, action: Action) -> ActionResult:
        """Apply one action: a batch of one."""
        batch = ActionBatch(
            system=action.system, instance=action.instance, ticket_id=action.ticket_id,
            actions=(action,),
        )
        result = self.apply_batch(batch)[0]
        if result.error is not None:
            raise result.error
        return result

    def apply_batch(self, batch: ActionBatch) -> list[ActionResult]:
        """Apply a ticket's actions in one ticket update; a result per action, in order.

        :raises ConnectorError: when nothing landed.
        """
        number = self._ticket_number(batch.ticket_id)
        ticket_id = str(number)
        self._tally.writes = 0
        maybe = {a.key for a in batch.actions if a.key in batch.maybe_applied}
        plan = self._plan(batch.actions)
        stamp: str | None = None
        if maybe:
            _, stamp, look = self._read(number)
            comment_keys = {a.key for _, acts in plan.comments for a in acts}
            needs_comments = bool(maybe & (comment_keys | {a.key for a in plan.notes}))
            bodies = self._comment_bodies(number) if needs_comments else []
            self._prune(plan, look, bodies, maybe)
        else:
            cached = self._cached(ticket_id)
            stamp = cached[1] if cached is not None else None
        self._fold_notes(plan)
        # Whatever lands makes a cached copy stale; a successful update caches Zendesk's answer.
        self._forget(ticket_id)
        results: dict[str, ActionResult] = dict(plan.done)
        payload, keys = self._payload(plan)
        if keys:
            # The first call: when it fails nothing landed, and its error goes to the caller.
            response = self._update(number, payload, keys, stamp)
            limit = _rate_limit(response)
            first = plan.comments[:1]
            for key in keys:
                detail = "updated " + ", ".join(plan.fields_of(key, first))
                results[key] = ActionResult(applied=True, detail=detail, rate_limit=limit)
        self._extra_comments(number, plan.comments[1:], results)
        superseded = ActionResult(applied=False, detail="superseded by a later action of the batch")
        ordered = [
            results.get(a.key)
            or (ActionResult(applied=False, error=plan.errors[a.key]) if a.key in plan.errors
                else superseded)
            for a in batch.actions
        ]
        if all(r.error is not None for r in ordered):
            raise next(r.error for r in ordered if r.error is not None)
        # Every write spends the account's budget, the retried conflict and extra comments too.
        ordered[0] = replace(ordered[0], calls=self._tally.writes)
        failed = [a.key for a, r in zip(batch.actions, ordered, strict=True) if r.error is not None]
        log.info(
            "zendesk.batch.applied" if not failed else "zendesk.batch.partial",
            extra={"instance": self.instance, "ticket": ticket_id, "actions": len(ordered),
                   "failed": failed},
        )
        return ordered

    def _update(
        self, number: int, payload: dict[str, Any], keys: Sequence[str], stamp: str | None
    ) -> requests.Response | None:
        """``PUT tickets/{id}``; on a safe_update conflict, read and try once more."""
        what = f"PUT tickets/{number}"
        for attempt in (1, 2):
            body = dict(payload)
            if stamp:
                body.update(safe_update=True, updated_stamp=stamp)
            try:
                update = ZenpyTicket(id=number, **body)
                self._tally.writes = getattr(self._tally, "writes", 0) + 1
                _, response = self._call(
                    what, lambda z, update=update: z.tickets.update(update), keys=keys
                )
            except RejectedError as exc:
                if exc.status != 409:
                    raise
                if attempt == 2 or not stamp:
                    # People are editing the ticket right now: worth another try later.
                    raise TransientError(
                        f"{self.name}: {what} kept conflicting with other updates: {exc}",
                        system=SYSTEM, status=409,
                    ) from exc
                log.info("zendesk.update.conflict",
                         extra={"instance": self.instance, "ticket": number})
                _, stamp, _ = self._read(number)
                self._forget(str(number))
                continue
            try:
                ticket_json = response.json().get("ticket") if response is not None else None
            except (ValueError, AttributeError):
                ticket_json = None
            if isinstance(ticket_json, dict):
                try:
                    self._remember(ticket_json)
                except ConnectorError:
                    self._forget(str(number))
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _extra_comments(
        self,
        number: int,
        extra: Sequence[tuple[bool, list[Action]]],
        results: dict[str, ActionResult],
    ) -> None:
        """Comments of the other visibility: Zendesk takes one comment per update."""
        stopped: TransientError | None = None
        for public, actions in extra:
            keys = [a.key for a in actions]
            if stopped is not None:
                results.update({k: ActionResult(applied=False, error=stopped) for k in keys})
                continue
            payload = {"comment": {"body": _comment_body(actions), "public": public}}
            try:
                response = self._update(number, payload, keys, None)
            except ConnectorError as exc:
                results.update({k: ActionResult(applied=False, error=exc) for k in keys})
                if isinstance(exc, TransientError):
                    stopped = exc
                continue
            limit = _rate_limit(response)
            results.update({k: ActionResult(applied=True, detail="updated comment", rate_limit=limit)
                            for k in keys})

    def _plan(self, actions: Sequence[Action]) -> _Plan:
        plan = _Plan()
        for action in actions:
            plan.keys.append(action.key)
            try:
                self._plan_one(plan, action)
            except ConnectorError as exc:
                plan.errors[action.key] = exc
        return plan

    def _plan_one(self, plan: _Plan, action: Action) -> None:
        key = action.key
        kind = action.kind
        if kind not in _FOLDED:
            raise RejectedError(f"{self.name}: the Zendesk connector cannot apply {kind.value}",
                                system=SYSTEM)
        if kind is ActionKind.ADD_TAGS or kind is ActionKind.REMOVE_TAGS:
            for tag in action.tags:
                # The engine's order decides: a later verb on the same tag replaces an earlier one.
                plan.tags.pop(tag, None)
                plan.tags[tag] = (kind is ActionKind.ADD_TAGS, key)
        elif kind is ActionKind.SET_PRIORITY:
            priority = str(action.priority).strip().lower()
            if priority not in _PRIORITIES:
                raise RejectedError(
                    f"{self.name}: '{action.priority}' is not a Zendesk priority "
                    f"({', '.join(sorted(_PRIORITIES))})", system=SYSTEM,
                )
            plan.values["priority"] = (priority, key)
        elif kind is ActionKind.TRANSITION:
            status = str(action.status).strip().lower()
            status = _STATUS_WORDS.get(status, status)
            if status not in _STATUSES:
                raise RejectedError(
                    f"{self.name}: '{action.status}' is not a Zendesk status "
                    f"({', '.join(sorted(_STATUSES))})", system=SYSTEM,
                )
            plan.values["status"] = (status, key)
        elif kind is ActionKind.ASSIGN:
            try:
                target = ZendeskTarget.model_validate(action.target or {})
            except ValidationError as exc:
                problem = exc.errors()[0]["msg"]
                raise RejectedError(
                    f"{self.name}: action {key} has a target Zendesk cannot use: {problem}",
                    system=SYSTEM,
                ) from None
            if target.group is not None:
                if target.group not in self.site.groups:
                    known = ", ".join(sorted(self.site.groups)) or "none defined"
                    raise RejectedError(
                        f"{self.name}: group '{target.group}' is not under connectors.zendesk."
                        f"groups (known: {known})", system=SYSTEM,
                    )
                plan.values["group_id"] = (self.site.groups[target.group], key)
            if target.assignee is not None:
                plan.values["assignee_id"] = (self._user_id(target.assignee), key)
        elif kind is ActionKind.ADD_WATCHERS:
            for who in action.watchers:
                plan.followers[self._user_id(who)] = key
        elif kind is ActionKind.COMMENT:
            plan.comment(action)
        else:  # NOTIFY
            plan.notes.append(action)

    def _user_id(self, who: str) -> int:
        """A person (by policy name or email) or a raw Zendesk user id, as Zendesk's number.

        :raises RejectedError: for someone without a Zendesk id.
        """
        person = self._people.get(who) or self._by_email.get(str(who).casefold())
        zendesk_id = getattr(person, "zendesk", None) if person is not None else None
        if zendesk_id is None and person is None and str(who).strip().isdigit():
            zendesk_id = int(str(who).strip())
        if not zendesk_id:
            raise RejectedError(
                f"{self.name}: '{who}' is not a person under people with a zendesk id",
                system=SYSTEM,
            )
        return int(zendesk_id)

    def _prune(
        self, plan: _Plan, look: Mapping[str, Any], bodies: list[str], maybe: set[str]
    ) -> None:
        """Drop the effects of possibly-applied actions that Zendesk already shows."""
        tags = set(look.get("tags") or ())
        for tag, (add, key) in list(plan.tags.items()):
            if key in maybe and (tag in tags) == add:
                del plan.tags[tag]
        for name, (value, key) in list(plan.values.items()):
            if key in maybe and str(look.get(name)) == str(value):
                del plan.values[name]
        followers = {str(f) for f in look.get("follower_ids") or ()}
        for user, key in list(plan.followers.items()):
            if key in maybe and str(user) in followers:
                del plan.followers[user]

        def landed(action: Action) -> bool:
            return action.key in maybe and any(_has_key_line(b, action.key) for b in bodies)

        plan.comments = [
            (public, kept) for public, actions in plan.comments
            if (kept := [a for a in actions if not landed(a)])
        ]
        plan.notes = [a for a in plan.notes if not landed(a)]
        for key in plan.keys:
            if key in maybe and key not in plan.errors and not plan.fields_of(key) and not any(
                a.key == key for a in plan.notes
            ):
                plan.done[key] = ActionResult(applied=False, detail="already there")

    def _fold_notes(self, plan: _Plan) -> None:
        """Notify actions: an internal note in an update that goes out anyway, else not sent."""
        if plan.notes and (plan.tags or plan.values or plan.followers) and not plan.comments:
            plan.comments = [(False, list(plan.notes))]
            plan.noted = {a.key for a in plan.notes}
        else:
            for action in plan.notes:
                plan.done.setdefault(action.key, ActionResult(applied=False, detail=NOT_CONFIGURED))
        plan.notes = []

    def _payload(self, plan: _Plan) -> tuple[dict[str, Any], list[str]]:
        """The update's body (with the first comment only) and the keys it carries, in order."""
        payload: dict[str, Any] = {}
        added = [tag for tag, (add, _) in plan.tags.items() if add]
        removed = [tag for tag, (add, _) in plan.tags.items() if not add]
        if added:
            payload["additional_tags"] = added
        if removed:
            payload["remove_tags"] = removed
        for name, (value, _) in plan.values.items():
            payload[name] = value
        if plan.followers:
            payload["followers"] = [{"user_id": u, "action": "put"} for u in plan.followers]
        carried = plan.field_keys()
        if plan.comments:
            public, actions = plan.comments[0]
            payload["comment"] = {"body": _comment_body(actions), "public": public}
            carried |= {a.key for a in actions}
        keys = [k for k in plan.keys if k in carried and k not in plan.errors and k not in plan.done]
        return payload, keys

    # the bulk sweep

    def apply_many(self, batches: Sequence[ActionBatch]) -> list[list[ActionResult]]:
        """Apply many tickets' batches with bulk updates (up to 100 tickets a job).

        Each job's status is followed until it ends; a ticket the job reports failed gets a
        :class:`RejectedError` with Zendesk's words, and a ticket it never reached (the job
        stopped part way, failed, or reported no results) a :class:`TransientError`: nothing is
        taken as applied without the job saying so. Batches with possibly-applied actions, with
        comments of both visibilities, or for a ticket seen twice, go one by one through
        :meth:`apply_batch`. Returns the results of each batch, in order.
        """
        out: list[list[ActionResult] | None] = [None] * len(batches)
        bulk: list[tuple[int, int, _Plan, dict[str, Any], list[str]]] = []
        seen: set[int] = set()
        for index, batch in enumerate(batches):
            try:
                number = self._ticket_number(batch.ticket_id)
            except ConnectorError as exc:
                out[index] = [ActionResult(applied=False, error=exc) for _ in batch.actions]
                continue
            plan = self._plan(batch.actions)
            self._fold_notes(plan)
            if batch.maybe_applied or len(plan.comments) > 1 or number in seen:
                out[index] = self._apply_alone(batch)
                continue
            seen.add(number)
            payload, keys = self._payload(plan)
            if not keys:
                out[index] = self._results(batch, plan, {})
                continue
            bulk.append((index, number, plan, payload, keys))
        for start in range(0, len(bulk), BULK_SIZE):
            chunk = bulk[start:start + BULK_SIZE]
            for (index, _, plan, _, _), found in zip(chunk, self._bulk_job(chunk), strict=True):
                out[index] = self._results(batches[index], plan, found)
        return [results if results is not None else [] for results in out]

    def _apply_alone(self, batch: ActionBatch) -> list[ActionResult]:
        try:
            return self.apply_batch(batch)
        except ConnectorError as exc:
            return [ActionResult(applied=False, error=exc) for _ in batch.actions]

    def _results(
        self, batch: ActionBatch, plan: _Plan, found: Mapping[str, ActionResult]
    ) -> list[ActionResult]:
        superseded = ActionResult(applied=False, detail="superseded by a later action of the batch")
        return [
            found.get(a.key) or plan.done.get(a.key)
            or (ActionResult(applied=False, error=plan.errors[a.key]) if a.key in plan.errors
                else superseded)
            for a in batch.actions
        ]

    def _bulk_job(
        self, chunk: list[tuple[int, int, _Plan, dict[str, Any], list[str]]]
    ) -> list[dict[str, ActionResult]]:
        """One ``update_many`` job and its status; the results of each ticket of ``chunk``."""
        what = f"PUT tickets/update_many ({len(chunk)} tickets)"
        keys = [key for *_, item_keys in chunk for key in item_keys]
        tickets = [ZenpyTicket(id=number, **payload) for _, number, _, payload, _ in chunk]
        try:
            _, response = self._call(what, lambda z: z.tickets.update(tickets), keys=keys)
            job = self._json(what, response, "job_status")
            limit = _rate_limit(response)
            job = self._follow(job)
        except ConnectorError as exc:
            return [{key: ActionResult(applied=False, error=exc) for key in item_keys}
                    for *_, item_keys in chunk]
        finally:
            for _, number, *_ in chunk:
                self._forget(str(number))
        status = str(job.get("status") or "")
        reported: dict[str, Mapping[str, Any]] = {}
        for entry in job.get("results") or ():
            if isinstance(entry, dict) and entry.get("id") is not None:
                reported[str(entry["id"])] = entry
        job_id = job.get("id")
        out = []
        for _, number, plan, _, item_keys in chunk:
            entry = reported.get(str(number))
            if entry is not None and _succeeded(entry):
                out.append({
                    key: ActionResult(applied=True, detail="updated " + ", ".join(
                        plan.fields_of(key)) + f" (job {job_id})", rate_limit=limit)
                    for key in item_keys
                })
                continue
            if entry is not None:
                said = "; ".join(str(entry[k]) for k in ("error", "errors", "details")
                                 if entry.get(k)) or "no reason given"
                error: ConnectorError = RejectedError(
                    f"{self.name}: job {job_id} failed ticket {number}: {str(said)[:300]}",
                    system=SYSTEM, status=422,
                )
            else:
                error = TransientError(
                    f"{self.name}: job {job_id} ended '{status}' without a result for ticket "
                    f"{number} ({job.get('progress')} of {job.get('total')} done)",
                    system=SYSTEM,
                )
            out.append({key: ActionResult(applied=False, error=error) for key in item_keys})
        log.info(
            "zendesk.bulk.job",
            extra={"instance": self.instance, "job": job_id, "status": status,
                   "tickets": len(chunk), "reported": len(reported)},
        )
        return out

    def _follow(self, job: Mapping[str, Any]) -> Mapping[str, Any]:
        """The job's status once it has ended, or as it stands when the wait is over."""
        deadline = self._clock() + self._job_wait
        job_id = job.get("id")
        while str(job.get("status")) not in JOB_DONE and job_id is not None:
            if self._clock() >= deadline:
                break
            self._sleep(self._job_poll)
            what = f"GET job_statuses/{job_id}"
            _, response = self._call(what, lambda z: z.job_status(id=job_id))
            job = self._json(what, response, "job_status")
        return job

    def close(self) -> None:
        """Close the client's session and forget cached tickets."""
        with self._lock:
            session, self._session, self._client = self._session, None, None
            self._tickets.clear()
        if session is not None:
            session.close()


def _raw_get(api: Any, **endpoint: Any) -> requests.Response:
    """A GET through ``zenpy`` (its auth, session and error answers) without building its objects.

    Only the JSON is read here; zenpy's objects of a hundred tickets cost more CPU than the request.
    """
    return api._get(api._build_url(api.endpoint(**endpoint)), raw_response=True)


def _succeeded(entry: Mapping[str, Any]) -> bool:
    if entry.get("success") is False or entry.get("errors") or entry.get("error"):
        return False
    status = str(entry.get("status") or "").lower()
    return entry.get("success") is True or status in ("updated", "completed", "ok")


def _read_cursor(cursor: str | None) -> dict[str, Any]:
    """The state a cursor carries; an unreadable one starts over like a first call."""
    if not cursor:
        return {}
    try:
        state = json.loads(cursor)
    except ValueError:
        log.warning("zendesk.changes.cursor_unreadable", extra={"cursor": cursor[:80]})
        return {}
    return state if isinstance(state, dict) else {}
