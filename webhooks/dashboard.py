"""The read-only dashboard: what is escalated, where, and how close to breach.

Served by the receiver's app at ``/dashboard/`` when ``ReceiverSettings.dashboard`` is on;
server-rendered HTML that refreshes itself (a ``<meta http-equiv="refresh">``, no JavaScript).
Requests from this machine (127.0.0.1, ::1) need nothing more; any other request needs the
``dashboard_token``, as ``Authorization: Bearer <token>``, or once as ``?token=<token>``, which
sets a cookie and redirects to the same page without it. A request forwarded by a proxy
(``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP``) counts as coming from beyond the machine,
whatever address the proxy connects from.

Business time is measured with the policy's calendars (``ReceiverSettings.policy``); times are
shown in UTC and in the zone of the escalation's tier calendar.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for

from escalier.core.calendar import BusinessCalendar
from escalier.core.clocks import business_elapsed, meter_deadline, zone
from escalier.core.durations import format_duration
from escalier.core.model import EscalationState, SlaClock
from escalier.store.views import (
    AuditEntry,
    EscalationDetail,
    OpenEscalation,
    Overview,
    read_escalation,
    read_overview,
)

__all__ = [
    "COOKIE",
    "ClockView",
    "Moment",
    "clock_view",
    "dashboard_blueprint",
    "escalation_page",
    "is_loopback",
    "moment",
    "overview_page",
    "span",
    "ticket_url",
]

COOKIE = "escalier_dashboard"
_LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
_FORWARDED = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")
_CLOCK_NAMES = {"acknowledge": "Acknowledge", "resolve": "Resolve", "follow_up": "Follow-up"}
_LEVEL_TEXT = {
    "ok": "On track",
    "warning": "Over 50%",
    "critical": "Over 75%",
    "breached": "Breached",
    "met": "Met",
}
_HEADERS = {
    # Nothing on these pages runs or loads from elsewhere; the stylesheet is our own.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # A ticket link must not tell the upstream our address, nor a ?token= it was opened with.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# --- what the pages show, as pure functions -------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """A time as the pages show it: in UTC and in a calendar's zone."""

    iso: str
    utc: str
    local: str | None


def moment(at: datetime, zone_name: str = "UTC") -> Moment:
    """``at`` spelled in UTC and, unless that is the same, in ``zone_name``."""
    at = at.astimezone(UTC)
    local = None
    if zone_name != "UTC":
        local = f"{at.astimezone(zone(zone_name)):%Y-%m-%d %H:%M} {zone_name}"
    return Moment(iso=at.isoformat(), utc=f"{at:%Y-%m-%d %H:%M} UTC", local=local)


def span(value: timedelta) -> str:
    """A duration for people: ``2d 3h``, ``1h 5m``, ``4m``, ``under a minute``."""
    minutes = int(value.total_seconds() // 60)
    if minutes < 1:
        return "under a minute"
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{days}d"] if days else []
    if hours:
        parts.append(f"{hours}h")
    if minutes and not days:
        parts.append(f"{minutes}m")
    return " ".join(parts)


@dataclass(frozen=True)
class ClockView:
    """One SLA clock at a moment: how much of its target is used, and its colour band.

    ``level`` is ``ok`` below 50% of the target, ``warning`` from 50%, ``critical`` from 75%,
    ``breached`` from 100% (or once the engine recorded a breach), ``met`` when it stopped in time.
    """

    name: str
    label: str
    level: str
    level_text: str
    percent: int
    target: timedelta
    elapsed: timedelta
    left: timedelta | None
    due: datetime | None
    paused: bool
    stopped: bool

    @property
    def due_word(self) -> str:
        """``was due`` once the target is used up, else ``due``."""
        return "was due" if self.left is None else "due"

    @property
    def summary(self) -> str:
        """One line: what is left, or by how much it is over, in business time."""
        state = " (paused)" if self.paused else ""
        target = format_duration(self.target)
        if self.stopped:
            return f"stopped after {span(self.elapsed)} of {target}"
        if self.left is None:
            over = self.elapsed - self.target
            if over >= timedelta(minutes=1):
                return f"over by {span(over)}{state}"
            return f"breached{state}"
        return f"{span(self.left)} left of {target}{state}"


def clock_view(clock: SlaClock, calendar: BusinessCalendar, now: datetime) -> ClockView:
    """How far ``clock`` has run at ``now``, measured in ``calendar``'s business time."""
    elapsed = clock.elapsed_before
    if clock.running_since is not None:
        elapsed += business_elapsed(calendar, clock.running_since, now)
    target = clock.target
    fraction = elapsed / target if target > timedelta(0) else 1.0
    stopped = clock.stopped_at is not None
    if clock.breached_at is not None or fraction >= 1:
        level = "breached"
    elif stopped:
        level = "met"
    elif fraction >= 0.75:
        level = "critical"
    elif fraction >= 0.5:
        level = "warning"
    else:
        level = "ok"
    left = target - elapsed if elapsed < target else None
    due = None
    if not stopped:
        due = meter_deadline(calendar, clock.running_since, clock.elapsed_before, target)
    return ClockView(
        name=clock.name,
        label=_CLOCK_NAMES.get(clock.name, clock.name),
        level=level,
        level_text=_LEVEL_TEXT[level],
        percent=int(fraction * 100),
        target=target,
        elapsed=elapsed,
        left=left,
        due=due,
        paused=clock.paused,
        stopped=stopped,
    )


def ticket_url(
    connectors: Mapping[str, Any], system: str, instance: str, ticket_id: str
) -> str | None:
    """The ticket's page upstream, from the policy's ``connectors`` section; None for mail.

    Jira: ``<url>/browse/KEY``; Zendesk: ``https://<subdomain>.zendesk.com/agent/tickets/ID``,
    or under the account's ``url`` when it has one (a sandbox, a proxy).
    """
    section = connectors.get(system)
    if not isinstance(section, Mapping):
        return None
    site = section
    if instance != "default":
        site = (section.get("instances") or {}).get(instance)
        if not isinstance(site, Mapping):
            return None
    ticket = quote(str(ticket_id), safe="")
    base: str | None = None
    if system == "jira":
        base, path = site.get("url"), f"/browse/{ticket}"
    elif system == "zendesk":
        base, path = site.get("url"), f"/agent/tickets/{ticket}"
        if not base and site.get("subdomain"):
            base = f"https://{site['subdomain']}.zendesk.com"
    if not isinstance(base, str) or not base.startswith(("https://", "http://")):
        return None
    return base.rstrip("/") + path


class _Names:
    """People's and places' names from the policy, and the calendars to measure time with."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.connectors: Mapping[str, Any] = getattr(policy, "connectors", None) or {}
        self._people: dict[str, str] | None = None

    def tier(self, level: int) -> str:
        found = getattr(self.policy, "tiers_by_level", {}).get(level)
        return f"Tier {level}: {found.name}" if found is not None else f"Tier {level}"

    def tiers(self) -> list[int]:
        return sorted(getattr(self.policy, "tiers_by_level", {}))

    def person(self, key: str) -> str:
        """A person's name, whether ``key`` is their policy name or their id in a system."""
        if key == "target":
            return "the tier's assignee"
        if self._people is None:
            self._people = {}
            for name, person in (getattr(self.policy, "people", None) or {}).items():
                for ref in (person.email, person.jira, person.zendesk, name):
                    if ref is not None:
                        self._people[str(ref)] = person.name
        return self._people.get(key, key)

    def department(self, key: str | None) -> str | None:
        if key is None:
            return None
        paths = getattr(self.policy, "paths", None)
        found = paths.functional.get(key) if paths is not None else None
        return found.name if found is not None else key

    def zone_of(self, tier: int) -> str:
        return self.calendar_of_tier(tier).timezone

    def calendar_of_tier(self, tier: int) -> BusinessCalendar:
        if self.policy is None:
            return _wall_clock()
        return self.policy.calendar_for(tier)

    def calendar(self, name: str) -> BusinessCalendar:
        if self.policy is None:
            return _wall_clock()
        return self.policy.calendars_built.get(name) or self.policy.calendar_for(None)


@lru_cache(maxsize=1)
def _wall_clock() -> BusinessCalendar:
    # Without a policy there is no business calendar to count in: every hour counts.
    return BusinessCalendar.always()


def _escalation_summary(
    names: _Names, state: EscalationState, now: datetime
) -> dict[str, Any]:
    zone_name = names.zone_of(state.tier)
    notification = state.notification
    if notification.acknowledged is not None:
        ack = {
            "done": True,
            "text": f"Acknowledged by {names.person(notification.acknowledged.by)}",
            "at": moment(notification.acknowledged.at, zone_name),
        }
    else:
        sent = f", notified {notification.sent} time{'s' if notification.sent != 1 else ''}"
        said = "Not acknowledged" + (sent if notification.sent else "")
        ack = {"done": False, "text": said, "at": None}
    raci = state.raci
    path = state.path.value.capitalize()
    department = names.department(state.department)
    if department:
        path += f": {department}"
    elif state.management_level is not None and state.path.value == "hierarchical":
        path += f": level {state.management_level}"
    clocks = [clock_view(c, names.calendar(c.calendar), now) for c in state.clocks]
    return {
        "system": state.system,
        "instance": state.instance,
        "ticket_id": state.ticket_id,
        "subject": state.ticket.subject,
        "url": ticket_url(names.connectors, state.system, state.instance, state.ticket_id),
        "tier": state.tier,
        "tier_name": names.tier(state.tier),
        "zone": zone_name,
        "clocks": [(c, moment(c.due, zone_name) if c.due else None) for c in clocks],
        "worst": max((_RANK[c.level] for c in clocks), default=0),
        "ack": ack,
        "raci": [
            (role, [names.person(p) for p in people])
            for role, people in (
                ("Responsible", raci.responsible), ("Accountable", raci.accountable),
                ("Consulted", raci.consulted), ("Informed", raci.informed),
            )
            if people
        ],
        "path": path,
        "opened": moment(state.opened_at, zone_name),
        "status": state.status.value,
        "priority": state.ticket.priority,
        "severity": state.ticket.severity,
    }


_RANK = {"met": 0, "ok": 0, "warning": 1, "critical": 2, "breached": 3}


def overview_page(overview: Overview, policy: Any, now: datetime) -> dict[str, Any]:
    """What the overview template needs: escalations grouped by tier, and the outbox's state."""
    names = _Names(policy)
    by_tier: dict[int, list[dict[str, Any]]] = {}
    for found in overview.escalations:
        by_tier.setdefault(found.state.tier, []).append(_row(names, found, now))
    levels = sorted(set(names.tiers()) | set(by_tier) | set(overview.open_by_tier), reverse=True)
    return {
        "tiers": [
            {
                "level": level,
                "name": names.tier(level),
                "open": overview.open_by_tier.get(level, 0),
                "rows": by_tier.get(level, []),
            }
            for level in levels
        ],
        "open_total": sum(overview.open_by_tier.values()),
        "shown_all": overview.shown_all,
        "shown": len(overview.escalations),
        "backlog": overview.backlog,
        "held": [(account, moment(account.until)) for account in overview.held],
        "dead_letters": overview.dead_letters,
        "latest_dead": [(dead, moment(dead.failed_at)) for dead in overview.latest_dead],
        "now": moment(now, _first_zone(names)),
    }


def _first_zone(names: _Names) -> str:
    return names.calendar_of_tier(names.tiers()[0]).timezone if names.tiers() else "UTC"


def _row(names: _Names, found: OpenEscalation, now: datetime) -> dict[str, Any]:
    row = _escalation_summary(names, found.state, now)
    row["id"] = found.id
    row["move"] = _entry_view(names, found.last_move, row["zone"]) if found.last_move else None
    latest = found.latest
    # What happened since the move (a warning, a breach), when it is not the move itself.
    row["since"] = (
        _entry_view(names, latest, row["zone"])
        if latest is not None and latest != found.last_move else None
    )
    return row


def _entry_view(names: _Names, entry: AuditEntry, zone_name: str) -> dict[str, Any]:
    moved = entry.from_tier is not None and entry.to_tier is not None
    if moved and entry.from_tier != entry.to_tier:
        where = f"{names.tier(entry.from_tier)} → {names.tier(entry.to_tier)}"
    elif entry.to_tier is not None or entry.from_tier is not None:
        where = f"at {names.tier(entry.to_tier or entry.from_tier or 0)}"
    else:
        where = ""
    return {"entry": entry, "at": moment(entry.at, zone_name), "where": where,
            "actor": names.person(entry.actor) if entry.actor else None}


def escalation_page(detail: EscalationDetail, policy: Any, now: datetime) -> dict[str, Any]:
    """What the escalation template needs: its summary, audit trail and upstream calls."""
    names = _Names(policy)
    summary = _escalation_summary(names, detail.state, now)
    zone_name = summary["zone"]
    return {
        "id": detail.id,
        "summary": summary,
        "status": detail.status,
        "updated": moment(detail.updated_at, zone_name),
        "audit": [_entry_view(names, entry, zone_name) for entry in detail.audit],
        "calls": [
            {
                "call": call,
                "created": moment(call.created_at, zone_name),
                "applied": moment(call.applied_at, zone_name) if call.applied_at else None,
                "next": moment(call.next_attempt_at, zone_name)
                if call.state == "pending" and call.next_attempt_at > now else None,
            }
            for call in detail.calls
        ],
        "now": moment(now, zone_name),
    }


# --- who may look --------------------------------------------------------------------------


def is_loopback(environ: Mapping[str, Any]) -> bool:
    """True for a request from this machine that no proxy forwarded."""
    if any(environ.get(key) for key in _FORWARDED):
        return False
    return environ.get("REMOTE_ADDR") in _LOOPBACK


def _cookie_value(token: str) -> str:
    # The cookie proves the token was shown without being the token: a leaked cookie is not a
    # token to type elsewhere, and a new token ends every cookie made from the old one.
    return hmac.new(token.encode(), b"escalier dashboard cookie", hashlib.sha256).hexdigest()


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _check_access() -> Response | None:
    if request.endpoint == "dashboard.static":
        return None  # the stylesheet, which the refusal page needs too
    settings = current_app.extensions["escalier"].settings
    token = settings.dashboard_token
    if token:
        if _same(_bearer(), token) or _same(request.cookies.get(COOKIE), _cookie_value(token)):
            return None
        if _same(request.args.get("token"), token):
            # Take the token out of the address bar, the history and any refresh.
            others = {k: v for k, v in request.args.items() if k != "token"}
            response = redirect(url_for(request.endpoint or "dashboard.overview",
                                        **(request.view_args or {}), **others), code=303)
            response.set_cookie(COOKIE, _cookie_value(token), max_age=12 * 3600, path="/dashboard",
                                httponly=True, samesite="Strict", secure=request.is_secure)
            return response
    if is_loopback(request.environ):
        return None
    page = render_template("dashboard/message.html", title="A token is needed", token=bool(token),
                           refresh=None, status=401)
    return Response(page, status=401, mimetype="text/html",
                    headers={"WWW-Authenticate": 'Bearer realm="escalier-dashboard"'})


def _secure(response: Response) -> Response:
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    return response


# --- the pages -----------------------------------------------------------------------------


def _overview() -> str:
    receiver = current_app.extensions["escalier"]
    settings = receiver.settings
    now = settings.clock()
    overview = read_overview(receiver.engine, now=now)
    page = overview_page(overview, settings.policy, now)
    return render_template("dashboard/overview.html", page=page,
                           refresh=settings.dashboard_refresh_seconds, title="Escalations")


def _escalation(escalation_id: int) -> Response | str:
    receiver = current_app.extensions["escalier"]
    settings = receiver.settings
    detail = read_escalation(receiver.engine, escalation_id)
    if detail is None:
        page = render_template("dashboard/message.html", title="No such escalation", token=None,
                               refresh=None, status=404, escalation_id=escalation_id)
        return Response(page, status=404, mimetype="text/html")
    now = settings.clock()
    page = escalation_page(detail, settings.policy, now)
    title = f"{page['summary']['ticket_id']}: {page['summary']['subject']}"
    return render_template("dashboard/escalation.html", page=page, title=title,
                           refresh=settings.dashboard_refresh_seconds)


def dashboard_blueprint() -> Blueprint:
    """The dashboard's pages under ``/dashboard``: the overview and one page per escalation."""
    blueprint = Blueprint(
        "dashboard", __name__, url_prefix="/dashboard", template_folder="templates",
        static_folder="static", static_url_path="/static",
    )
    blueprint.before_request(_check_access)
    blueprint.after_request(_secure)
    # Without strict slashes /dashboard is the overview too: werkzeug's redirect to /dashboard/
    # would go through the receiver's JSON error handler and lose its Location.
    blueprint.add_url_rule("/", "overview", _overview, methods=["GET"], strict_slashes=False)
    blueprint.add_url_rule(
        "/escalations/<int:escalation_id>", "escalation", _escalation, methods=["GET"]
    )
    return blueprint
