"""``escalier parse``: what a connector reads from one captured delivery, with no store and no network.

This is how an admin answers "why did Escalier ignore this?": save the body from Jira's or
Zendesk's delivery log (or an ``.eml`` file for mail) and ask the connector what it sees in it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import pluggy

from escalier.core.connector import DeliverySkipped, RawEvent
from escalier.core.errors import ConfigError, ConfigProblem, PayloadError
from escalier.core.model import TicketEvent

__all__ = ["parse_file", "run"]

EXIT_OK = 0
EXIT_USAGE = 2


class _Unreadable(Exception):
    """The input cannot be parsed: the message says why; the command exits 2."""


def parse_file(
    source: str,
    body: bytes,
    *,
    headers: Sequence[str] = (),
    instance: str = "default",
    policy_path: str | None = None,
    plugin_manager: pluggy.PluginManager | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The documented result of parsing one delivery: ``{"source", "events", "skipped"}``.

    :raises _Unreadable: an unknown source, a bad header, or a body the connector cannot read.
    """
    from escalier.plugins import get_plugin_manager

    pm = plugin_manager or get_plugin_manager()
    known = _sources(pm)
    if source not in known:
        raise _Unreadable(f"no connector named {source!r} (installed: {', '.join(sorted(known)) or 'none'})")
    raw = RawEvent(
        source=source, instance=instance, body=body, headers=_headers(headers),
        received_at=now or datetime.now(UTC),
    )
    config = _settings(policy_path, pm, source, instance) if policy_path else None
    try:
        events = pm.hook.parse_event_for_connector(raw=raw, config=config, connection=None)
    except DeliverySkipped as skipped:
        return {"source": source, "events": [], "skipped": {"reason": skipped.reason, "class": skipped.kind}}
    except PayloadError as exc:
        raise _Unreadable(str(exc)) from exc
    if events is None:
        raise _Unreadable(f"the {source} connector does not parse deliveries yet")
    return {"source": source, "events": [event.model_dump(mode="json") for event in events], "skipped": None}


def run(
    source: str,
    path: str,
    *,
    headers: Sequence[str] = (),
    instance: str = "default",
    policy_path: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """The command: print what ``source``'s connector reads from the file at ``path``."""
    out = out or sys.stdout
    try:
        body = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        print(f"escalier parse: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = parse_file(source, body, headers=headers, instance=instance, policy_path=policy_path)
    except _Unreadable as exc:
        print(f"escalier parse: {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if as_json:
        json.dump(result, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        _print(result, out)
    return EXIT_OK


def _print(result: dict[str, Any], out: TextIO) -> None:
    skipped = result["skipped"]
    if skipped is not None:
        print(f"skipped ({skipped['class']}): {skipped['reason']}", file=out)
        return
    if not result["events"]:
        print("no events: the delivery carries nothing to act on", file=out)
    for data in result["events"]:
        event = TicketEvent.model_validate(data)
        actor = f" by {event.actor} ({event.actor_role.value})" if event.actor else f" ({event.actor_role.value})"
        print(f"{event.kind.value:<22} {event.ticket_id}  at {event.occurred_at.isoformat()}{actor}", file=out)
        print(f"  id: {event.id}", file=out)
        for change in event.changes:
            print(f"  changed {change.field}: {change.before!r} -> {change.after!r}", file=out)
        if event.comment is not None:
            visibility = "public" if event.comment.public else "internal"
            first = (event.comment.body.strip().splitlines() or [""])[0]
            print(f"  comment ({visibility}): {first[:100]}", file=out)
        ticket = event.ticket
        if ticket is None:
            print("  ticket: not in the payload; the worker reads it from the upstream", file=out)
            continue
        print(f"  ticket: {ticket.subject!r}, status {ticket.status} ({ticket.status_category.value}), "
              f"priority {ticket.priority}, severity {ticket.severity}, "
              f"users affected {ticket.users_affected}", file=out)
        print(f"  tags: {', '.join(ticket.tags) or '-'}; assignee {ticket.assignee or '-'}; "
              f"group {ticket.group or '-'}; requester {ticket.requester or '-'}; "
              f"organization {ticket.organization or '-'}", file=out)
        for name, value in sorted(ticket.fields.items()):
            print(f"  field {name}: {value!r}", file=out)


def _sources(pm: pluggy.PluginManager) -> set[str]:
    return {spec.name for registered in pm.hook.register_connectors() for spec in registered}


def _headers(lines: Sequence[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise _Unreadable(f"--header {line!r} is not 'Name: value'")
        found[name.strip()] = value.strip()
    return found


def _settings(policy_path: str, pm: pluggy.PluginManager, source: str, instance: str) -> Any:
    from escalier.core.config import load_policy
    from escalier.runtime.operations import configured_instances

    policy = load_policy(policy_path, plugin_manager=pm)
    found = configured_instances(policy, pm).get((source, instance))
    if found is None:
        raise ConfigError([ConfigProblem(
            policy_path, None, f"connectors.{source}",
            f"no {source} instance named {instance!r} is configured",
        )])
    return found.settings
