"""Past Jira issues with their histories, as events, for ``escalier backtest``.

One JQL search (the site's scope, ``created`` in the window, oldest first) with
``expand=changelog`` and the comments, 50 issues a page (``/search/jql`` with ``nextPageToken`` on
Cloud, ``/search`` with ``startAt`` on Data Center); an issue whose changelog or comments the
search cut short is completed from ``issue/{id}/changelog`` and ``issue/{id}/comment``. Each issue
becomes the events reconciliation makes of it (:func:`~escalier.connectors.jira.events.events_from_issue`:
the same ids and kinds as the webhooks), and each event is given the issue as it was just after
that change, as its webhook carried it: the issue's fields now, with the changelog undone back to
that moment. Nothing is written.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from escalier.connectors.jira import events
from escalier.connectors.jira.config import JiraSite
from escalier.connectors.jira.connection import JiraConnection
from escalier.core.errors import ConnectorError, PayloadError
from escalier.core.model import Ticket, TicketEvent

__all__ = ["read_history"]

DETAIL_PAGE = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Data Center's changelog names system fields by display name (``Component``), Cloud by id.
_SYSTEM_FIELDS = {"component": "components", "component/s": "components", "fix version": "fixVersions"}


def read_history(
    connection: JiraConnection,
    *,
    since: datetime,
    until: datetime,
    progress: Callable[[str], None] | None = None,
) -> Iterator[list[TicketEvent]]:
    """Each issue created in ``[since, until]`` within the site's scope: its events, oldest first.

    :raises ConnectorError: when Jira cannot be read (the connection's errors, unchanged).
    """
    return _History(connection, progress).issues(since, until)


class _History:
    """Reads one site's issues and rewinds each to the moment of each of its events."""

    def __init__(self, connection: JiraConnection, progress: Callable[[str], None] | None):
        self.connection = connection
        self.site: JiraSite = connection.site
        self.instance = connection.instance
        self.progress = progress
        self._statuses: dict[str, Mapping[str, Any]] | None = None
        self._field_ids: dict[str, str] | None = None

    def issues(self, since: datetime, until: datetime) -> Iterator[list[TicketEvent]]:
        """The histories, one issue at a time."""
        read = 0
        for issue in self._search(since):
            read += 1
            try:
                snapshot = events.ticket_from_issue(issue, self.site, self.instance)
            except PayloadError:
                continue
            if not since <= snapshot.created_at <= until:
                continue
            self._complete(issue)
            yield self.events_of(issue)
            if self.progress is not None:
                self.progress(f"read {read:,} Jira issues")

    def events_of(self, issue: Mapping[str, Any]) -> list[TicketEvent]:
        """The issue's events, each with the ticket as it was just after it."""
        found = events.events_from_issue(issue, self.site, self.instance, since=_EPOCH)
        timeline, by_history = self._rewind(issue)
        times = [at for at, _ in timeline]
        issue_id = str(issue.get("id") or "")
        out = []
        for event in found:
            ticket = None
            prefix = events.changelog_event_id(self.instance, issue_id, "")
            if event.id.startswith(prefix):
                ticket = by_history.get(event.id[len(prefix):])
            if ticket is None:
                index = bisect.bisect_right(times, event.occurred_at) - 1
                ticket = timeline[max(index, 0)][1]
            out.append(event.model_copy(update={"ticket": ticket}))
        return out

    # --- reading -------------------------------------------------------------------------------

    def _search(self, since: datetime) -> Iterator[Mapping[str, Any]]:
        connection = self.connection
        # JQL compares to the minute in the searching user's zone: a minute early, then exact.
        stamp = since.astimezone(connection._time_zone()).strftime("%Y/%m/%d %H:%M")
        scope = self.site.jql or (f'project = "{self.site.project}"' if self.site.project else None)
        clause = f'created >= "{stamp}" ORDER BY created ASC'
        jql = f"({scope}) AND {clause}" if scope else clause
        page: Any = None
        while True:
            issues, page = connection.search_page(jql, page)
            yield from issues
            if page is None:
                return

    def _complete(self, issue: Any) -> None:
        """Fill in the changelog and comments a search answer cut short."""
        key = issue.get("key") or issue.get("id")
        changelog = issue.get("changelog")
        if isinstance(changelog, dict):
            histories = changelog.get("histories") or []
            total = changelog.get("total")
            if isinstance(total, int) and total > len(histories) and self.connection.cloud:
                changelog["histories"] = self._all(f"issue/{key}/changelog", "values")
        fields = issue.get("fields") or {}
        comment = fields.get("comment")
        if isinstance(comment, dict):
            comments = comment.get("comments") or []
            total = comment.get("total")
            if isinstance(total, int) and total > len(comments):
                comment["comments"] = self._all(f"issue/{key}/comment", "comments")

    def _all(self, path: str, key: str) -> list[Any]:
        items: list[Any] = []
        while True:
            found = self.connection._get(path, {"startAt": len(items), "maxResults": DETAIL_PAGE})
            page = found.get(key) or []
            items.extend(page)
            total = found.get("total")
            if not page or found.get("isLast") or (isinstance(total, int) and len(items) >= total):
                return items

    def statuses(self) -> dict[str, Mapping[str, Any]]:
        """The site's statuses by id and by lower-case name, with their categories (read once)."""
        if self._statuses is None:
            self._statuses = {}
            try:
                found = self.connection._get("status")
            except ConnectorError:
                found = []
            for status in found if isinstance(found, list) else ():
                if isinstance(status, Mapping):
                    for ident in (status.get("id"), str(status.get("name") or "").lower()):
                        if ident:
                            self._statuses[str(ident)] = status
        return self._statuses

    def field_ids(self) -> dict[str, str]:
        """Field ids by lower-case display name (read once): Data Center's changelog names fields."""
        if self._field_ids is None:
            self._field_ids = dict(_SYSTEM_FIELDS)
            try:
                found = self.connection._get("field")
            except ConnectorError:
                found = []
            for entry in found if isinstance(found, list) else ():
                if isinstance(entry, Mapping) and entry.get("id") and entry.get("name"):
                    self._field_ids.setdefault(str(entry["name"]).lower(), str(entry["id"]))
        return self._field_ids

    # --- rewinding -----------------------------------------------------------------------------

    def _rewind(
        self, issue: Mapping[str, Any]
    ) -> tuple[list[tuple[datetime, Ticket]], dict[str, Ticket]]:
        """The ticket after each history (by history id), and the timeline from creation on."""
        fields = {k: copy.deepcopy(v) for k, v in (issue.get("fields") or {}).items() if k != "comment"}
        histories = []
        for history in (issue.get("changelog") or {}).get("histories") or ():
            at = events._time(history.get("created")) if isinstance(history, Mapping) else None
            if at is not None and history.get("id") is not None:
                histories.append((at, _number(history["id"]), history))
        histories.sort(key=lambda h: (h[0], h[1]))
        after: dict[str, Ticket] = {}
        timeline: list[tuple[datetime, Ticket]] = []
        for at, _, history in reversed(histories):
            ticket = self._ticket(issue, fields, history.get("created"))
            after[str(history["id"])] = ticket
            timeline.append((at, ticket))
            for item in reversed(history.get("items") or []):
                if isinstance(item, Mapping):
                    self._undo(fields, item)
        created = self._ticket(issue, fields, fields.get("created"))
        timeline.append((created.created_at, created))
        timeline.reverse()
        return timeline, after

    def _ticket(self, issue: Mapping[str, Any], fields: dict[str, Any], updated: Any) -> Ticket:
        return events.ticket_from_issue(
            {"id": issue.get("id"), "key": issue.get("key"), "fields": {**fields, "updated": updated}},
            self.site, self.instance,
        )

    def _undo(self, fields: dict[str, Any], item: Mapping[str, Any]) -> None:
        """Put one changelog item's field back as it was before the change."""
        label = str(item.get("field") or "")
        name = str(item.get("fieldId") or "") or self.field_ids().get(label.lower(), label.lower())
        before, before_text = item.get("from"), item.get("fromString")
        had = before not in (None, "") or before_text not in (None, "")
        if name == "status":
            known = self.statuses()
            fields["status"] = (
                known.get(str(before)) or known.get(str(before_text or "").lower())
                or {"id": before, "name": before_text}
            )
        elif name == "resolution":
            fields["resolution"] = {"id": before, "name": before_text} if had else None
            if not had:
                fields["resolutiondate"] = None
        elif name in ("priority", "issuetype"):
            fields[name] = {"id": before, "name": before_text} if had else None
        elif name == "labels":
            fields["labels"] = str(before_text or "").split()
        elif name in ("assignee", "reporter"):
            fields[name] = self._user(before, before_text) if before else None
        elif name == "components":
            components = [c for c in fields.get("components") or () if isinstance(c, Mapping)]
            added_id, added_name = item.get("to"), item.get("toString")
            if added_id is not None or added_name is not None:
                components = [
                    c for c in components
                    if not (c.get("id") == added_id and added_id is not None or c.get("name") == added_name)
                ]
            if had:
                components.append({"id": before, "name": before_text})
            fields["components"] = components
        elif name in ("summary", "description"):
            fields[name] = before_text
        elif name.startswith("customfield_"):
            fields[name] = _custom_before(fields.get(name), before, before_text, had)

    def _user(self, ident: Any, display: Any) -> dict[str, Any]:
        if self.connection.cloud:
            return {"accountId": ident, "displayName": display}
        return {"name": ident, "key": ident, "displayName": display}


def _custom_before(now: Any, before: Any, before_text: Any, had: bool) -> Any:
    """A custom field's earlier value, in the shape its present value has."""
    if not had:
        return None
    if isinstance(now, Mapping) and ("value" in now or "id" in now):
        return {"value": before_text, "id": before}
    if isinstance(now, list):
        return [{"value": v} for v in str(before_text or "").split(",") if v]
    if isinstance(now, (int, float)) and not isinstance(now, bool) or now is None:
        try:
            return float(str(before_text))
        except ValueError:
            return before_text
    return before_text


def _number(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
