"""What a store's audit trail says, asked directly in SQL (SQLite), to check the report against.

Nothing here calls the report's code: each figure is one query (window functions for the stays),
and the quantiles are taken by nearest rank over the values the query returns.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, text

ENTERING = ("opened", "escalated", "functional", "deescalated", "reopened")
UP = ("escalated", "functional", "hierarchical")


def query(url: str, sql: str, **params: Any) -> list[Any]:
    """The rows of one query."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql), params).all()
    finally:
        engine.dispose()


def moment(value: str) -> datetime:
    """A time as SQLite stores it (UTC, no offset)."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def nearest_rank(values: list[float], q: float) -> float | None:
    """The smallest value with at least ``q`` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(q * len(ordered)) - 1]


def _in(kinds: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{k}'" for k in kinds) + ")"


def flow(url: str) -> dict[str, Counter[str]]:
    """Entries per UTC day and kind."""
    found: dict[str, Counter[str]] = defaultdict(Counter)
    for day, kind, n in query(url, "SELECT date(at), kind, count(*) FROM audit GROUP BY 1, 2"):
        found[day][kind] = n
    return found


def escalations_by_tier(url: str) -> dict[tuple[str, int], int]:
    """Escalations (any path) per UTC day and tier of the entry."""
    rows = query(url, f"SELECT date(at), to_tier, count(*) FROM audit WHERE kind IN {_in(UP)} GROUP BY 1, 2")
    return {(day, tier): n for day, tier, n in rows}


def stays(url: str) -> list[dict[str, Any]]:
    """Each move into a tier with the entry that ends it (the next move or resolution), if any."""
    rows = query(url, f"""
        SELECT escalation_id, id, kind, to_tier, at,
               LEAD(at) OVER w AS ended_at, LEAD(kind) OVER w AS ended_by
        FROM audit WHERE kind IN {_in((*ENTERING, 'resolved'))}
        WINDOW w AS (PARTITION BY escalation_id ORDER BY at, id)
    """)
    found = []
    for escalation_id, entry_id, kind, tier, at, ended_at, ended_by in rows:
        if kind == "resolved":
            continue
        found.append({"escalation_id": escalation_id, "id": entry_id, "kind": kind, "tier": tier,
                      "at": moment(at), "ended_at": moment(ended_at) if ended_at else None,
                      "ended_by": ended_by})
    return found


def times(url: str) -> dict[tuple[str, int], list[float]]:
    """Durations in seconds by (measure, tier), as the report defines them."""
    found: dict[tuple[str, int], list[float]] = defaultdict(list)
    for stay in stays(url):
        tier = stay["tier"]
        if stay["ended_at"] is not None:
            found[("time in tier", tier)].append((stay["ended_at"] - stay["at"]).total_seconds())
        ack = query(url, """
            SELECT min(at) FROM audit WHERE escalation_id = :e AND kind = 'acknowledged'
              AND at >= :start AND (:end IS NULL OR at < :end)
        """, e=stay["escalation_id"], start=stay["at"].strftime("%Y-%m-%d %H:%M:%S.%f"),
            end=stay["ended_at"].strftime("%Y-%m-%d %H:%M:%S.%f") if stay["ended_at"] else None)[0][0]
        if ack is not None:
            found[("time to acknowledge", tier)].append((moment(ack) - stay["at"]).total_seconds())
    for tier, at, start in query(url, f"""
        SELECT e.from_tier, e.at,
               (SELECT s.at FROM audit s WHERE s.escalation_id = e.escalation_id
                  AND s.kind IN {_in(ENTERING)} AND (s.at < e.at OR (s.at = e.at AND s.id < e.id))
                ORDER BY s.at DESC, s.id DESC LIMIT 1)
        FROM audit e WHERE e.kind IN {_in(UP)}
    """):
        found[("time to escalate", tier)].append((moment(at) - moment(start)).total_seconds())
    for tier, resolved, opened in query(url, """
        SELECT r.from_tier, r.at, (SELECT o.at FROM audit o WHERE o.escalation_id = r.escalation_id
                                     AND o.kind = 'opened')
        FROM audit r WHERE r.kind = 'resolved' AND r.id = (
            SELECT r2.id FROM audit r2 WHERE r2.escalation_id = r.escalation_id AND r2.kind = 'resolved'
            ORDER BY r2.at, r2.id LIMIT 1)
    """):
        seconds = (moment(resolved) - moment(opened)).total_seconds()
        found[("time to resolve", tier)].append(seconds)
        found[("time to resolve", 0)].append(seconds)
    return found


def breaches_by_tier(url: str) -> dict[int, int]:
    """SLA breaches per tier of the entry."""
    return dict(query(url, "SELECT to_tier, count(*) FROM audit WHERE kind = 'sla-breach' GROUP BY 1"))


def warnings(url: str) -> dict[int, Counter[str]]:
    """Per tier: warned clocks (escalation, tier, clock), breached anyway or acted on or pending."""
    found: dict[int, Counter[str]] = defaultdict(Counter)
    rows = query(url, """
        SELECT w.escalation_id, w.to_tier,
               CASE WHEN w.reason LIKE '%of the acknowledge target%' THEN 'acknowledge' ELSE 'resolve' END,
               min(w.at)
        FROM audit w WHERE w.kind = 'sla-warning' GROUP BY 1, 2, 3
    """)
    for escalation_id, tier, clock, warned_at in rows:
        breached = query(url, """
            SELECT count(*) FROM audit WHERE escalation_id = :e AND to_tier = :t AND kind = 'sla-breach'
              AND reason LIKE :clock
        """, e=escalation_id, t=tier, clock=f"%The {clock} target%")[0][0]
        stopping = ("acknowledged", "resolved", *UP[:2], "deescalated") if clock == "acknowledge" else (
            "resolved", *UP[:2], "deescalated")
        acted = query(url, f"""
            SELECT count(*) FROM audit WHERE escalation_id = :e AND at >= :w AND kind IN {_in(stopping)}
        """, e=escalation_id, w=warned_at)[0][0]
        found[tier]["breached" if breached else "acted_on" if acted else "pending"] += 1
    return found


def tier_paths(url: str) -> dict[int, list[int]]:
    """The tiers each escalation went through, in order, consecutive repeats folded."""
    paths: dict[int, list[int]] = defaultdict(list)
    for escalation_id, tier in query(url, f"""
        SELECT escalation_id, to_tier FROM audit WHERE kind IN {_in(ENTERING)} ORDER BY escalation_id, at, id
    """):
        path = paths[escalation_id]
        if not path or path[-1] != tier:
            path.append(tier)
    return paths


def own_labels(policy: Path) -> tuple[set[str], set[str]]:
    """The tags and components a policy's targets set, read from its YAML."""
    data = yaml.safe_load(policy.read_text())
    tags: set[str] = set()
    components: set[str] = set()
    targets = [t for tier in data["tiers"] for t in tier.get("targets", {}).values()]
    for tier in data["tiers"]:
        tags.update(tier.get("tags", []))
    for department in data.get("paths", {}).get("functional", {}).values():
        targets.extend(department.get("targets", {}).values())
    for target in targets:
        tags.update(target.get("labels", []))
        if "component" in target:
            components.add(target["component"])
    return tags, components


def behind(url: str, policy: Path) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """Tags, components and organizations of the escalations that escalated (or opened above tier 1)."""
    own_tags, own_components = own_labels(policy)
    rows = query(url, f"""
        SELECT e.id, e.state FROM escalations e WHERE EXISTS (
            SELECT 1 FROM audit a WHERE a.escalation_id = e.id
              AND (a.kind IN {_in(UP)} OR (a.kind = 'opened' AND a.to_tier > 1)))
    """)
    tags: Counter[str] = Counter()
    components: Counter[str] = Counter()
    organizations: Counter[str] = Counter()
    for _, state in rows:
        ticket = json.loads(state)["ticket"]
        tags.update(t for t in set(ticket["tags"]) if not t.startswith("escalier-") and t not in own_tags)
        components.update(c for c in set(ticket["fields"].get("components") or ()) if c not in own_components)
        if ticket.get("organization"):
            organizations[str(ticket["organization"])] += 1
    return tags, components, organizations, len(rows)


def people(url: str, policy: Path) -> dict[str, Counter[str]]:
    """Acknowledgements, resolutions and moves per person (named by the policy where it can)."""
    data = yaml.safe_load(policy.read_text())
    names = {}
    for key, person in data["people"].items():
        for ref in (person.get("jira"), person.get("zendesk"), person.get("email"), key):
            if ref is not None:
                names[str(ref).lower()] = f"{person['name']} ({key})"
    found: dict[str, Counter[str]] = defaultdict(Counter)
    for actor, kind, n in query(url, """
        SELECT actor, kind, count(*) FROM audit WHERE actor IS NOT NULL GROUP BY 1, 2
    """):
        found[names.get(actor.lower(), actor)][kind] += n
    return found
