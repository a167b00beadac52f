"""One configured connection to a Jira site: actions out, tickets and changes in.

This is the only code of the Jira connector that touches the network. It builds a ``jira.JIRA``
client on first use, with the client's own retries off (``max_retries=0``: the runtime's retry
policy is the only one), an explicit timeout, and without the ``GET /rest/api/2/serverInfo`` the
client would otherwise send when it is built (the deployment is known from the config). After
that, every request goes through the client's session, which holds the authentication, the
timeout and the client's headers:

- an escalation step costs one ``PUT /issue/{key}`` with ``update`` verbs and one
  ``POST /issue/{key}/comment``; ``Issue.update`` is not used because it reads the issue again
  after writing, and ``JIRA.issue`` before an edit would be another read;
- ``enhanced_search_issues`` and ``search_issues`` are not used because they first read
  ``GET /rest/api/2/field`` to translate field names, and we send field ids already;
- ``add_watcher`` looks the user up first; we resolve people from the policy instead.

Every write carries ``X-Escalier-Action-Keys`` with the keys of the actions it applies, and every
comment ends with a line ``escalier:action=<key>``. For the actions of a batch that an earlier
attempt may have applied, one read of the issue shows what is already there (labels, assignee,
components, priority, status, the keyed comments; watchers with one more read) and only the rest
is written. A notification leaves nothing to read back, so one that may have gone out is sent
again: a reminder twice rather than none.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from jira import JIRA, JIRAError
from pydantic import ValidationError

from escalier.connectors._values import seconds_until as _seconds_until
from escalier.connectors.jira import events
from escalier.connectors.jira.config import JiraSite, JiraTarget
from escalier.core.connector import ActionBatch, ActionResult, Changes, RateLimit
from escalier.core.errors import (
    AuthError,
    ConnectorError,
    EscalierError,
    NotFoundError,
    RejectedError,
    TransientError,
)
from escalier.core.model import Action, ActionKind, Ticket
from escalier.core.policy import Person

__all__ = ["ACTION_KEYS_HEADER", "JiraConnection", "KEY_LINE_PREFIX"]

log = logging.getLogger("escalier.connectors.jira")

SYSTEM = "jira"
ACTION_KEYS_HEADER = "X-Escalier-Action-Keys"
KEY_LINE_PREFIX = "escalier:action="
PAGE_SIZE = 50
# Without a cursor, reconciliation looks this far back from ``now``.
LOOK_BACK = timedelta(hours=1)
# JQL compares dates to the minute, so each search starts a minute before the last change seen;
# the events found twice carry the same ids and are decided once.
OVERLAP = timedelta(minutes=1)
CACHE_SECONDS = 30.0

# The fields a ticket is read from; the site's own field ids are added to these.
_TICKET_FIELDS = (
    "summary", "status", "resolution", "priority", "labels", "assignee", "reporter", "creator",
    "components", "created", "updated", "resolutiondate", "description", "project", "issuetype",
)
# What the look before re-applying an action compares with.
_LOOK_FIELDS = "labels,assignee,priority,components,comment,status,project"
_DONE_WORDS = frozenset({"closed", "done", "resolved", "solved"})
_ISSUE_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)-\d+$")
_FIELD_ACTIONS = frozenset(
    {ActionKind.ASSIGN, ActionKind.ADD_TAGS, ActionKind.REMOVE_TAGS, ActionKind.SET_PRIORITY}
)


# --- errors -------------------------------------------------------------------------------------


def _upstream_message(response: requests.Response | None) -> str:
    """Jira's own words from an error body: ``errorMessages`` and ``errors``, or a short text."""
    if response is None:
        return ""
    try:
        data = response.json()
    except ValueError:
        text = " ".join((response.text or "").split())
        return text[:200]
    if not isinstance(data, dict):
        return ""
    parts = [str(m) for m in data.get("errorMessages") or () if m]
    errors = data.get("errors")
    if isinstance(errors, dict):
        parts.extend(f"{name}: {text}" for name, text in errors.items())
    for single in ("message", "errorMessage"):
        if not parts and isinstance(data.get(single), str):
            parts.append(data[single])
    return "; ".join(parts)[:500]


def _rate_limit(response: requests.Response | None) -> RateLimit | None:
    """What the response's rate-limit headers say about the remaining budget, if anything."""
    if response is None:
        return None
    headers = response.headers

    def number(name: str) -> int | None:
        try:
            return int(float(headers[name]))
        except (KeyError, ValueError):
            return None

    limit, remaining = number("X-RateLimit-Limit"), number("X-RateLimit-Remaining")
    # Cloud's X-RateLimit-Reset is an ISO time; Retry-After, when present, is the sharper hint.
    reset = _seconds_until(headers.get("Retry-After"))
    if reset is None:
        reset = _seconds_until(headers.get("X-RateLimit-Reset"))
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimit(limit=limit, remaining=remaining, reset_after=reset)


def _translate(
    exc: Exception, *, name: str, what: str, timeout: float | None = None
) -> ConnectorError:
    """The one place where the ``jira`` client's and ``requests``' exceptions become ours.

    ``name`` is ``jira/<instance>``, ``what`` the request (``PUT issue/SUP-1``); neither the
    message nor anything it quotes carries a credential.
    """
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, ValueError):
        # requests' JSONDecodeError is a ValueError too: a 200 that is an HTML login page.
        return ConnectorError(f"{name}: {what} answered with a body that is not JSON",
                              system=SYSTEM)
    if isinstance(exc, requests.Timeout):
        after = f" after {timeout:g}s" if timeout else ""
        return TransientError(f"{name}: {what} timed out{after}", system=SYSTEM)
    if isinstance(exc, requests.ConnectionError):
        # The exception's text can quote the URL; the class name says enough.
        return TransientError(
            f"{name}: {what} failed: cannot reach the site ({type(exc).__name__})", system=SYSTEM
        )
    if isinstance(exc, requests.RequestException):
        return ConnectorError(f"{name}: {what} failed ({type(exc).__name__})", system=SYSTEM)
    response = getattr(exc, "response", None)
    status = getattr(exc, "status_code", None) or getattr(response, "status_code", None)
    if not isinstance(exc, JIRAError) or status is None:
        return ConnectorError(f"{name}: {what} failed ({type(exc).__name__})", system=SYSTEM)
    said = _upstream_message(response)
    suffix = f": {said}" if said else ""
    if status == 429 or status == 408 or status >= 500:
        hint = response.headers.get("Retry-After") if response is not None else None
        return TransientError(
            f"{name}: {what} answered {status}{suffix}",
            system=SYSTEM, status=status, retry_after=_seconds_until(hint),
        )
    if status in (401, 403):
        message = f"{name}: {what} refused our credentials ({status}){suffix}"
        return AuthError(message, system=SYSTEM, status=status)
    if status == 404:
        message = f"{name}: {what} found nothing (404){suffix}"
        return NotFoundError(message, system=SYSTEM, status=status)
    message = f"{name}: {what} was refused ({status}){suffix}"
    return RejectedError(message, system=SYSTEM, status=status)


# --- the plan of a batch ------------------------------------------------------------------------


@dataclass
class _Edit:
    """One verb of the issue ``PUT``: what it does, and which action asked for it."""

    field: str
    verb: str
    value: Any
    key: str


@dataclass
class _Plan:
    """A batch as requests: the ``PUT``'s verbs by (field, item), and the other calls' actions."""

    edits: dict[tuple[str, str], _Edit] = field(default_factory=dict)
    field_keys: list[str] = field(default_factory=list)
    calls: list[Action] = field(default_factory=list)
    errors: dict[str, ConnectorError] = field(default_factory=dict)

    def edit(self, field_name: str, item: str, verb: str, value: Any, key: str) -> None:
        # The engine's order decides: a later verb on the same item replaces an earlier one.
        self.edits.pop((field_name, item), None)
        self.edits[(field_name, item)] = _Edit(field_name, verb, value, key)

    def update_body(self) -> dict[str, list[dict[str, Any]]]:
        update: dict[str, list[dict[str, Any]]] = {}
        for edit in self.edits.values():
            update.setdefault(edit.field, []).append({edit.verb: edit.value})
        return update


def _lower(value: Any) -> str:
    return str(value).casefold() if value is not None else ""


def _has_key_line(body: Any, key: str) -> bool:
    if not isinstance(body, str):
        return False
    wanted = KEY_LINE_PREFIX + key
    return any(line.strip() == wanted for line in body.splitlines())


# --- the connection -----------------------------------------------------------------------------


class JiraConnection:
    """One configured connection to one Jira site, Cloud or Data Center."""

    system = SYSTEM

    def __init__(
        self,
        site: JiraSite,
        instance: str,
        environ: Mapping[str, str],
        people: Mapping[str, Person],
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.site = site
        self.instance = instance
        self.name = f"{SYSTEM}/{instance}"
        self.cloud = site.deployment == "cloud"
        self._people = dict(people)
        self._by_email = {
            p.email.casefold(): p for p in self._people.values() if getattr(p, "email", None)
        }
        # The engine names watchers by their people.<name>.jira; on a site where they have
        # another id (site.people), that id is translated back to the person.
        self._ids = {
            name: site.people.get(name) or getattr(p, "jira", None) for name, p in self._people.items()
        }
        self._by_default_id = {
            p.jira: name for name, p in self._people.items() if getattr(p, "jira", None)
        }
        self._clock = clock
        try:
            self._token = site.token.reveal(environ)
        except KeyError:
            raise EscalierError(
                f"{self.name}: environment variable {site.token.env} is not set"
            ) from None
        if not self._token:
            raise EscalierError(f"{self.name}: environment variable {site.token.env} is empty")
        if self.cloud and not site.user:
            raise EscalierError(
                f"{self.name}: a Cloud site needs 'user' "
                "(the email of the account the API token belongs to)"
            )
        self._base = site.url.rstrip("/") + "/rest/api/2/"
        self._client: JIRA | None = None
        self._lock = threading.Lock()
        self._tally = threading.local()  # write requests of the batch in hand, per thread
        self._tickets: dict[str, tuple[float, Ticket, frozenset[str]]] = {}
        self._me: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"JiraConnection({self.name}, {self.site.url})"

    # the client

    def _jira(self) -> JIRA:
        with self._lock:
            if self._client is None:
                if self.cloud or self.site.user:
                    # Cloud: email and API token; Data Center with a user: username and password.
                    auth: dict[str, Any] = {"basic_auth": (self.site.user, self._token)}
                else:
                    auth = {"token_auth": self._token}  # a Data Center personal access token
                self._client = JIRA(
                    server=self.site.url,
                    **auth,
                    max_retries=0,
                    timeout=self.site.timeout_seconds,
                    get_server_info=False,
                    # The client would otherwise set its module logger to INFO for the process.
                    logging=False,
                )
                # The client's Cloud switch normally comes from serverInfo, which we do not read.
                self._client.deploymentType = "Cloud" if self.cloud else None
            return self._client

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        keys: Sequence[str] = (),
    ) -> requests.Response:
        """One request through the client's session; raises our errors, never the library's."""
        what = f"{method} {path}"
        headers = {ACTION_KEYS_HEADER: ",".join(keys)} if keys else {}
        if method != "GET":
            self._tally.writes = getattr(self._tally, "writes", 0) + 1
        try:
            session = self._jira()._session
            return session.request(
                method,
                self._base + path,
                params=dict(params) if params else None,
                data=json.dumps(body) if body is not None else None,
                headers=headers,
            )
        except (JIRAError, requests.RequestException, ValueError) as exc:
            timeout = self.site.timeout_seconds
            raise _translate(exc, name=self.name, what=what, timeout=timeout) from exc

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        response = self._request("GET", path, params=params)
        try:
            return response.json()
        except ValueError as exc:
            raise _translate(exc, name=self.name, what=f"GET {path}") from exc

    # reading

    def fetch_ticket(self, ticket_id: str) -> Ticket:
        """The issue as Jira describes it now (by id or key); cached for about 30 seconds."""
        now = self._clock()
        with self._lock:
            for ident in [i for i, (until, _, _) in self._tickets.items() if until <= now]:
                del self._tickets[ident]
            cached = self._tickets.get(str(ticket_id))
        if cached is not None:
            return cached[1]
        issue = self._get(
            f"issue/{quote(str(ticket_id), safe='')}", {"fields": ",".join(self._ticket_fields())}
        )
        ticket = events.ticket_from_issue(issue, self.site, self.instance)
        idents = frozenset(str(i) for i in (issue.get("id"), issue.get("key"), ticket_id) if i)
        with self._lock:
            for ident in idents:
                self._tickets[ident] = (now + CACHE_SECONDS, ticket, idents)
        return ticket

    def _ticket_fields(self) -> list[str]:
        fields = list(_TICKET_FIELDS)
        site_fields = self.site.fields
        for extra in (site_fields.severity, site_fields.users_affected, site_fields.organization,
                      *site_fields.custom.values()):
            if extra and extra not in fields:
                fields.append(extra)
        return fields

    def _forget(self, ticket_id: str) -> None:
        """Drop the cached ticket once we write to it: our own change makes it stale."""
        with self._lock:
            idents = self._tickets.get(str(ticket_id), (0.0, None, frozenset({str(ticket_id)})))[2]
            for ident in list(self._tickets):
                if ident in idents or self._tickets[ident][2] & idents:
                    del self._tickets[ident]

    def check(self) -> str:
        """Read the server info and our own user; say which site, version and account."""
        info = self._get("serverInfo")
        me = self._get("myself")
        self._me = me
        reported = "Cloud" if info.get("deploymentType") == "Cloud" else "Data Center"
        version = info.get("version") or ".".join(str(n) for n in info.get("versionNumbers") or ())
        who = me.get("displayName") or me.get("name") or me.get("accountId") or "an unnamed user"
        if me.get("accountId"):
            ident = f"accountId {me['accountId']}"
        else:
            ident = f"username {me.get('name')}"
        text = f"Jira {reported} at {self.site.url} ({version}) as {who} ({ident})"
        if (reported == "Cloud") != self.cloud:
            text += f"; but the policy says deployment: {self.site.deployment}"
        return text

    def search_page(self, jql: str, page: Any = None) -> tuple[list[Mapping[str, Any]], Any]:
        """One page of a JQL search, with the changelog and comments; and the next page, or None.

        Cloud pages ``/search/jql`` with a token (it retired ``/search``); Data Center pages
        ``/search`` by ``startAt``. ``page`` is what the previous call returned (None: the first).
        """
        params: dict[str, Any] = {
            "jql": jql, "maxResults": PAGE_SIZE, "expand": "changelog",
            "fields": ",".join([*self._ticket_fields(), "comment"]),
        }
        if self.cloud:
            if page:
                params["nextPageToken"] = page
            found = self._get("search/jql", params)
            issues = found.get("issues") or []
            next_page = found.get("nextPageToken") if not found.get("isLast", False) else None
            more = bool(next_page)
        else:
            offset = int(page or 0)
            params["startAt"] = offset
            found = self._get("search", params)
            issues = found.get("issues") or []
            total = found.get("total")
            more = offset + len(issues) < total if isinstance(total, int) else len(issues) >= PAGE_SIZE
            next_page = offset + len(issues)
        found_issues = [i for i in issues if isinstance(i, Mapping)]
        return found_issues, (next_page if more and issues else None)

    def changes_since(self, cursor: str | None, now: datetime) -> Changes:
        """Changes to issues updated since ``cursor`` (first: the last hour), 50 issues a call."""
        state = _read_cursor(cursor)
        since = datetime.fromisoformat(state["since"]) if "since" in state else now - LOOK_BACK
        high = datetime.fromisoformat(state["high"]) if "high" in state else since
        page = state.get("page")
        start = since - OVERLAP
        issues, next_page = self.search_page(self._changes_jql(start), page)
        more = next_page is not None
        found_events = []
        for issue in issues:
            found_events.extend(
                events.events_from_issue(issue, self.site, self.instance, since=start)
            )
            updated = _parse_time((issue.get("fields") or {}).get("updated"))
            if updated is not None and updated > high:
                high = updated
        if more:
            next_state = {"since": since.isoformat(), "high": high.isoformat(), "page": next_page}
        else:
            # The round searched everything since ``since``: when little changed, the next one
            # need not look further back than a first call would.
            next_state = {"since": min(max(high, now - LOOK_BACK), now).isoformat()}
        log.info(
            "jira.changes.listed",
            extra={
                "instance": self.instance, "issues": len(issues), "events": len(found_events),
                "more": more,
            },
        )
        cursor_out = json.dumps(next_state, sort_keys=True)
        return Changes(events=tuple(found_events), cursor=cursor_out, more=more)

    def _changes_jql(self, start: datetime) -> str:
        # JQL reads dates in the searching user's time zone, to the minute.
        local = start.astimezone(self._time_zone())
        stamp = local.strftime("%Y/%m/%d %H:%M")
        scope = self.site.jql or (f'project = "{self.site.project}"' if self.site.project else None)
        clause = f'updated >= "{stamp}" ORDER BY updated ASC'
        return f"({scope}) AND {clause}" if scope else clause

    def _time_zone(self) -> ZoneInfo:
        if self._me is None:
            self._me = self._get("myself")
        try:
            return ZoneInfo(self._me.get("timeZone") or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            return ZoneInfo("UTC")

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
        """Apply a ticket's actions in as few calls as Jira allows; a result per action, in order.

        :raises ConnectorError: when nothing landed (the first call failed, or every action did).
        """
        issue = str(batch.ticket_id)
        path = f"issue/{quote(issue, safe='')}"
        results: dict[str, ActionResult] = {}
        self._tally.writes = 0
        maybe = {a.key for a in batch.actions if a.key in batch.maybe_applied}
        plan = self._plan(batch.actions)
        look: dict[str, Any] | None = None
        if maybe or self._needs_project(issue, plan):
            look = self._get(path, {"fields": _LOOK_FIELDS}).get("fields") or {}
        if look is not None and maybe:
            self._prune(plan, look, maybe, results)
        try:
            self._apply_fields(path, plan, results)
            self._apply_calls(path, plan, look, maybe, results)
        finally:
            # Whatever landed makes a cached copy of the issue stale.
            self._forget(issue)
        ordered = [
            results.get(a.key) or ActionResult(applied=False, error=plan.errors.get(a.key))
            for a in batch.actions
        ]
        if all(r.error is not None for r in ordered):
            raise next(r.error for r in ordered if r.error is not None)
        # The writes this batch made, told on its first result, so each spends a write token.
        ordered[0] = replace(ordered[0], calls=self._tally.writes)
        failed = [a.key for a, r in zip(batch.actions, ordered, strict=True) if r.error is not None]
        log.info(
            "jira.batch.applied" if not failed else "jira.batch.partial",
            extra={
                "instance": self.instance, "ticket": issue, "actions": len(ordered),
                "failed": failed,
            },
        )
        return ordered

    def _plan(self, actions: Iterable[Action]) -> _Plan:
        plan = _Plan()
        for action in actions:
            try:
                if action.kind not in _FIELD_ACTIONS:
                    plan.calls.append(action)
                    continue
                self._plan_fields(plan, action)
                plan.field_keys.append(action.key)
            except ConnectorError as exc:
                plan.errors[action.key] = exc
        return plan

    def _plan_fields(self, plan: _Plan, action: Action) -> None:
        key = action.key
        if action.kind is ActionKind.ADD_TAGS:
            for label in action.tags:
                plan.edit("labels", label, "add", label, key)
        elif action.kind is ActionKind.REMOVE_TAGS:
            for label in action.tags:
                plan.edit("labels", label, "remove", label, key)
        elif action.kind is ActionKind.SET_PRIORITY:
            name = self.site.priorities.get(str(action.priority), str(action.priority))
            plan.edit("priority", "", "set", {"name": name}, key)
        elif action.kind is ActionKind.ASSIGN:
            try:
                target = JiraTarget.model_validate(action.target or {}).for_instance(self.instance)
            except ValidationError as exc:
                problem = exc.errors()[0]["msg"]
                raise RejectedError(
                    f"{self.name}: action {key} has a target Jira cannot use: {problem}",
                    system=SYSTEM,
                ) from None
            if target.assignee:
                plan.edit("assignee", "", "set", self._user_ref(target.assignee, strict=True), key)
            if target.component:
                plan.edit("components", target.component, "add", {"name": target.component}, key)
                for other in self.site.components:
                    if other != target.component:
                        plan.edit("components", other, "remove", {"name": other}, key)
            for label in target.labels:
                plan.edit("labels", label, "add", label, key)

    def _user_ref(
        self, who: str, *, strict: bool = False, raw: bool = True
    ) -> dict[str, str] | None:
        """A person (by policy name or email), or with ``raw`` a Jira id, as a user field wants it.

        Data Center names users by username where Cloud wants an accountId. Who cannot be named
        is None, or with ``strict`` a :class:`RejectedError`.
        """
        name = who if who in self._people else self._by_default_id.get(who)
        if name is None:
            person = self._by_email.get(who.casefold())
            name = next((n for n, p in self._people.items() if p is person), None)
        jira_id = self._ids.get(name) if name is not None else None
        if name is None and raw and "@" not in who:
            jira_id = who
        if not jira_id:
            if strict:
                raise RejectedError(
                    f"{self.name}: '{who}' is not a person under people with a jira id",
                    system=SYSTEM,
                )
            return None
        return {"accountId": jira_id} if self.cloud else {"name": jira_id}

    def _needs_project(self, issue: str, plan: _Plan) -> bool:
        # Only a key names its project; with a numeric id, an internal comment in a service desk
        # project would go out public unless we look.
        if not self.site.service_desk_projects or _ISSUE_KEY.match(issue):
            return False
        return any(a.kind is ActionKind.COMMENT and not a.public for a in plan.calls)

    def _prune(
        self,
        plan: _Plan,
        look: Mapping[str, Any],
        maybe: set[str],
        results: dict[str, ActionResult],
    ) -> None:
        """Drop the verbs of possibly-applied actions that Jira already shows."""
        labels = set(look.get("labels") or ())
        components = {c.get("name") for c in look.get("components") or () if isinstance(c, dict)}
        assignee = look.get("assignee") or {}
        priority = _lower((look.get("priority") or {}).get("name"))
        for spot, edit in list(plan.edits.items()):
            if edit.key not in maybe:
                continue
            if edit.field == "labels":
                there = (edit.value in labels) == (edit.verb == "add")
            elif edit.field == "components":
                there = (edit.value["name"] in components) == (edit.verb == "add")
            elif edit.field == "assignee":
                wanted = edit.value.get("accountId") or edit.value.get("name")
                there = wanted in (assignee.get("accountId"), assignee.get("name"))
            else:
                there = _lower(edit.value.get("name")) == priority
            if there:
                del plan.edits[spot]
        sent = {e.key for e in plan.edits.values()}
        for key in plan.field_keys:
            if key in maybe and key not in sent:
                results[key] = ActionResult(applied=False, detail="already there")

    def _apply_fields(self, path: str, plan: _Plan, results: dict[str, ActionResult]) -> None:
        keys = list(dict.fromkeys(e.key for e in plan.edits.values()))
        if keys:
            # The first write: when it fails nothing landed, and its error goes to the caller.
            response = self._request("PUT", path, body={"update": plan.update_body()}, keys=keys)
            limit = _rate_limit(response)
            for key in keys:
                touched = sorted({e.field for e in plan.edits.values() if e.key == key})
                detail = "updated " + ", ".join(touched)
                results[key] = ActionResult(applied=True, detail=detail, rate_limit=limit)
        superseded = ActionResult(applied=False, detail="superseded by a later action of the batch")
        for key in plan.field_keys:
            results.setdefault(key, superseded)

    def _apply_calls(
        self,
        path: str,
        plan: _Plan,
        look: Mapping[str, Any] | None,
        maybe: set[str],
        results: dict[str, ActionResult],
    ) -> None:
        stopped: TransientError | None = None
        for action in plan.calls:
            if stopped is not None:
                # After a transient failure the rest waits, so the worker retries them together.
                results[action.key] = ActionResult(applied=False, error=stopped)
                continue
            try:
                results[action.key] = self._apply_call(action, path, look, action.key in maybe)
            except ConnectorError as exc:
                results[action.key] = ActionResult(applied=False, error=exc)
                if isinstance(exc, TransientError):
                    stopped = exc

    def _apply_call(
        self, action: Action, path: str, look: Mapping[str, Any] | None, maybe: bool
    ) -> ActionResult:
        keys = [action.key]
        if action.kind is ActionKind.COMMENT:
            if maybe and look is not None:
                comments = (look.get("comment") or {}).get("comments") or ()
                bodies = (c.get("body") for c in comments if isinstance(c, dict))
                if any(_has_key_line(b, action.key) for b in bodies):
                    return ActionResult(applied=False, detail="already there")
            text = f"{(action.body or '').rstrip()}\n\n{KEY_LINE_PREFIX}{action.key}"
            body: dict[str, Any] = {"body": text}
            if not action.public and self._service_desk(path, look):
                # Elsewhere the property breaks some Jira versions; a comment there is just one.
                body["properties"] = [{"key": "sd.public.comment", "value": {"internal": True}}]
            response = self._request("POST", f"{path}/comment", body=body, keys=keys)
            try:
                created = response.json() if response.content else {}
            except ValueError:
                created = {}
            detail = f"comment {created.get('id', '')}".strip()
            return ActionResult(applied=True, detail=detail, rate_limit=_rate_limit(response))
        if action.kind is ActionKind.ADD_WATCHERS:
            return self._add_watchers(action, path, maybe)
        if action.kind is ActionKind.TRANSITION:
            return self._transition(action, path, look, maybe)
        if action.kind is ActionKind.NOTIFY:
            return self._notify(action, path)
        raise RejectedError(
            f"{self.name}: the Jira connector cannot apply {action.kind.value}", system=SYSTEM
        )

    def _service_desk(self, path: str, look: Mapping[str, Any] | None) -> bool:
        projects = {p.casefold() for p in self.site.service_desk_projects}
        if not projects:
            return False
        if look is not None and isinstance(look.get("project"), dict):
            return _lower(look["project"].get("key")) in projects
        match = _ISSUE_KEY.match(path.removeprefix("issue/"))
        return bool(match) and match.group(1).casefold() in projects

    def _add_watchers(self, action: Action, path: str, maybe: bool) -> ActionResult:
        wanted, absent = [], []
        for who in action.watchers:
            # Someone the policy consults may have no account on this site (a product manager,
            # a director): they are told by notification, and their absence fails nothing.
            ref = self._user_ref(who)
            if ref is None:
                absent.append(who)
            else:
                wanted.append(ref.get("accountId") or ref.get("name"))
        if not wanted:
            return ActionResult(applied=False, detail=f"no Jira account for {', '.join(absent)}")
        if maybe:
            found = self._get(f"{path}/watchers").get("watchers") or ()
            present = {w.get("accountId") or w.get("name") for w in found if isinstance(w, dict)}
            wanted = [w for w in wanted if w not in present]
            if not wanted:
                return ActionResult(applied=False, detail="already there")
        limit = None
        for watcher in wanted:
            # The body is a bare JSON string: an accountId on Cloud, a username on Data Center.
            response = self._request("POST", f"{path}/watchers", body=watcher, keys=[action.key])
            limit = _rate_limit(response) or limit
        detail = f"{len(wanted)} watcher(s) added" + (
            f"; no Jira account for {', '.join(absent)}" if absent else "")
        return ActionResult(applied=True, detail=detail, rate_limit=limit)

    def _transition(
        self, action: Action, path: str, look: Mapping[str, Any] | None, maybe: bool
    ) -> ActionResult:
        wanted = _lower(action.status)
        status = (look or {}).get("status") or {}
        if maybe and look is not None and self._status_matches(status, wanted):
            return ActionResult(applied=False, detail="already there")
        found = self._get(f"{path}/transitions").get("transitions") or ()
        choice = next((t for t in found if _lower(t.get("name")) == wanted), None)
        if choice is None:
            choice = next(
                (t for t in found if _lower((t.get("to") or {}).get("name")) == wanted), None
            )
        if choice is None and wanted in _DONE_WORDS:
            # The engine speaks of "closed"; a workflow may call its final status Done or Resolved.
            choice = next(
                (t for t in found if self._status_matches(t.get("to") or {}, wanted)), None
            )
        if choice is None:
            names = ", ".join(sorted(str(t.get("name")) for t in found)) or "none"
            if maybe:
                detail = f"no transition to '{action.status}' now; taken as applied"
                return ActionResult(applied=False, detail=detail)
            raise RejectedError(
                f"{self.name}: {path} has no transition named or leading to '{action.status}' "
                f"(available: {names})",
                system=SYSTEM,
            )
        body = {"transition": {"id": str(choice["id"])}}
        response = self._request("POST", f"{path}/transitions", body=body, keys=[action.key])
        detail = f"transition {choice.get('name')}"
        return ActionResult(applied=True, detail=detail, rate_limit=_rate_limit(response))

    @staticmethod
    def _status_matches(status: Mapping[str, Any], wanted: str) -> bool:
        if _lower(status.get("name")) == wanted:
            return True
        category = (status.get("statusCategory") or {}).get("key")
        return wanted in _DONE_WORDS and category == "done"

    def _notify(self, action: Action, path: str) -> ActionResult:
        users = []
        for who in action.recipients:
            ref = self._user_ref(who, raw=False)
            if ref is not None and ref not in users:
                users.append(ref)
        # With nobody we can name, the people already on the issue hear of it.
        to: dict[str, Any] = {"users": users} if users else {"assignee": True, "watchers": True}
        text = action.body or ""
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        subject = (first or f"Escalation of {action.ticket_id}")[:255]
        body = {"subject": subject, "textBody": text, "to": to}
        response = self._request("POST", f"{path}/notify", body=body, keys=[action.key])
        detail = f"notified {len(users)} user(s)" if users else "notified assignee and watchers"
        return ActionResult(applied=True, detail=detail, rate_limit=_rate_limit(response))

    def close(self) -> None:
        """Close the client's session and forget cached tickets."""
        with self._lock:
            client, self._client = self._client, None
            self._tickets.clear()
        if client is not None:
            client.close()


def _read_cursor(cursor: str | None) -> dict[str, Any]:
    """The state a cursor carries; an unreadable one starts over like a first call."""
    if not cursor:
        return {}
    try:
        state = json.loads(cursor)
        for name in ("since", "high"):
            if name in state:
                datetime.fromisoformat(state[name])
    except (ValueError, TypeError):
        log.warning("jira.changes.cursor_unreadable", extra={"cursor": cursor[:80]})
        return {}
    return state if isinstance(state, dict) else {}


def _parse_time(value: Any) -> datetime | None:
    """A Jira date (``2026-03-02T09:15:30.000+0000``) as an aware datetime, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=UTC)
