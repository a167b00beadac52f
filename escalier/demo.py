"""``escalier demo``: a support day at Northwind, played on the sandboxes of this machine.

The demo starts the Jira (Cloud), Zendesk and mail sandboxes in this process, a
:class:`~escalier.runtime.local.LocalDeployment` on SQLite in a temporary directory (the receiver
on a free port, a worker in its thread) and the policy shipped beside this module
(``escalier/demo.yaml``, the example policy pointed at the sandboxes). Then it plays a scripted
day on a :class:`DemoClock` that the sandboxes, the receiver and the worker share. Each step of
the script is a person acting through a sandbox's helpers; everything after that takes the real
path: signed webhook -> receiver -> store -> engine -> outbox -> connector -> sandbox, and mail
through SMTP into mailboxes that the worker reads over IMAP.

Each decision is printed as it is committed (an ``escalation_decided`` hook implementation), and
the day ends with a check of each scenario against what the sandboxes and the store hold, and a
summary: escalations per tier, breaches caught, upstream calls spent, mails sent.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import re
import threading
import time
import urllib.request
import uuid
import webbrowser
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from escalier.core.hookspecs import hookimpl

__all__ = [
    "DEFAULT_SPEED",
    "POLICY_PATH",
    "DemoClock",
    "DemoReport",
    "add_demo_command",
    "run_demo",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

POLICY_PATH = Path(__file__).with_name("demo.yaml")
"""The demo's policy, shipped with the package; the demo runs a copy with its sandboxes' ports."""

DEFAULT_SPEED = 360.0
"""Demo seconds per real second: the day (08:30 to 15:10) plays in about 67 seconds."""

DAY = date(2026, 3, 3)  # a Tuesday, no holiday in Berlin
BERLIN = ZoneInfo("Europe/Berlin")
START = "08:30"
END = "15:10"

# The ports the shipped policy names, which the demo replaces with its sandboxes' own.
_POLICY_PORTS = {
    "jira": "http://127.0.0.1:8091",
    "zendesk": "http://127.0.0.1:8092",
    "smtp": "port: 2525",
    "imap": "port: 1143",
}
_TOKEN = "sandbox-token"
_MAIL_PASSWORD = "sandbox-password"
_MAIL_USERS = ("support", "escalations", "tier1", "specialists", "incident")
_JIRA_SEVERITY, _JIRA_USERS = "customfield_10050", "customfield_10051"
_ZENDESK_SEVERITY, _ZENDESK_USERS = 360000201, 360000202
_ZENDESK_GROUPS = {"tier-1": 360000101, "tier-2": 360000102, "tier-3": 360000103}
_PEOPLE_ZENDESK = {"mia": 360001, "priya": 360003, "tomas": 360004}
_AMARA_JIRA = "5f9a3c2e7d1b4a0012ab34cd"  # her accountId in escalier/demo.yaml
_ONCALL = "oncall@northwind.example"  # the oncall channel's address in escalier/demo.yaml
_ACK_LINK = re.compile(r"(https?://\S+/ack/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)")

# What a newcomer sees of each decision; warnings, pauses and priority changes stay in the audit.
_SHOWN = frozenset({
    "opened", "escalated", "functional", "hierarchical", "deescalated", "missing-information",
    "move-refused", "sla-breach", "notified", "notification-exhausted", "acknowledged", "resolved",
})
_MOVES = ("escalated", "functional", "hierarchical", "deescalated")
# What the script causes on purpose: the outbox retrying through the injected Zendesk outage.
_EXPECTED_WARNINGS = frozenset({"runtime.retry.sleeping", "runtime.action.requeued"})

# Retries measured in demo time: a 503 is tried again within seconds, then the row waits in the
# outbox a minute, two, four... (at most ten), long enough to ride out an upstream outage.
_DEMO_RETRIES: dict[str, float | int] = {
    "attempts_per_pass": 3, "initial_wait": 5.0, "max_wait": 60.0, "jitter": 2.0,
    "max_total_attempts": 60, "requeue_initial": 60.0, "requeue_max": 600.0,
}

_DESCRIPTION = """\
Watch Escalier work, with nothing to sign up for or configure: this starts a
Jira (Cloud) sandbox, a Zendesk sandbox and a mail server on this machine, the
webhook receiver and a worker on SQLite in a temporary directory, and plays a
support day at Northwind (Tuesday, Berlin office hours) on a fast clock.

Each step is a person acting in Jira, in Zendesk or by mail; Escalier reacts
through its real path: signed webhook -> receiver -> store -> decision engine
-> outbox -> connector -> the sandbox's REST API (or SMTP). The day shows:

  - a tier 1 ticket nobody picks up: acknowledge target breached, then moved
    to the specialists after 2 business hours unresolved;
  - a VIP customer with a high-severity problem: straight to the specialists;
  - an outage hitting 240 users: tier 3 at once, paged by mail every 5
    minutes until the on-call clicks the acknowledge link in the page, then
    handed to engineering (the functional path);
  - a ticket missing its steps to reproduce: Escalier asks the customer in a
    comment, the customer answers, and the ticket moves;
  - a deadline conflict: a tag sends it to the Head of Support (hierarchical);
  - a workaround at tier 3: back to tier 2 once it has spent an hour there;
  - an email-only customer: acknowledged by mail, escalated by mail to the
    specialists' address;
  - the Zendesk API failing with 503 for 45 minutes: the outbox holds the
    updates and delivers them when it answers again.

Every decision is printed as it happens, with its reason. At the end each
scenario is checked against the sandboxes and the store, and a summary says
how many escalations reached each tier, which breaches were caught, and how
many upstream calls were spent. The dashboard shows the same escalations live.
Ctrl-C stops everything cleanly at any time."""

_EPILOG = """\
examples:
  escalier demo                       the whole day in about 70 seconds
  escalier demo --speed 120           slower: 1 second is 2 minutes of the day
  escalier demo --keep-running        stay up afterwards (on a real-time clock) to look around
  escalier demo --db sqlite:///demo.db --quiet    keep the store; print the summary only

what to try next:
  escalier check-config escalier/demo.yaml      the policy the demo plays (valid as shipped)
  escalier simulate examples/escalier.yaml examples/tickets/outage-vip.json
                                                dry-run one ticket: every decision, when, why
  escalier sandbox jira                         a sandbox of your own, with its control API
  escalier parse jira delivery.json             what Escalier reads from a captured webhook
  escalier status --db sqlite:///demo.db        the store a --db run left behind

exit status: 0 every scenario happened as scripted, 1 one did not, 130 interrupted."""


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    """Register ``escalier demo [--speed N] [--keep-running] [--no-browser] [--db URL] [--quiet]``."""
    parser = commands.add_parser(
        "demo",
        help="play a support day on sandboxes on this machine (start here)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--speed", type=_speed, default=DEFAULT_SPEED, metavar="N",
        help=f"demo seconds per real second (default {DEFAULT_SPEED:g}: the day in about 70 s)",
    )
    parser.add_argument(
        "--keep-running", action="store_true",
        help="after the day, keep the sandboxes, receiver and worker up (real-time clock) until Ctrl-C",
    )
    parser.add_argument("--no-browser", action="store_true", help="do not open the dashboard in a browser")
    parser.add_argument(
        "--db", metavar="URL",
        help="keep the store in this SQLAlchemy URL (a fresh database, e.g. sqlite:///demo.db) "
        "instead of a temporary one",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="print the summary only")
    parser.set_defaults(handler=_demo)


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError("the speed is between 1 (real time) and 100000")
    return value


def _demo(args: argparse.Namespace) -> int:
    report = run_demo(
        speed=args.speed, keep_running=args.keep_running, browser=not args.no_browser,
        db=args.db, quiet=args.quiet, out=sys.stdout,
    )
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_FAILED


# --- the clock ----------------------------------------------------------------------------------


class DemoClock:
    """Time that runs ``speed`` times faster than real time from ``start``, once started.

    ``now()`` for the sandboxes, the receiver and the worker; ``sleep()`` waits the real share of
    demo seconds; ``advance()`` jumps ahead. Until :meth:`start` the clock stands still, so that
    starting the servers takes no time of the day.
    """

    def __init__(self, start: datetime, *, speed: float = DEFAULT_SPEED):
        if start.tzinfo is None:
            raise ValueError("the demo clock starts at a timezone-aware time")
        self._base = start.astimezone(UTC)
        self._speed = float(speed)
        self._began: float | None = None
        self._lock = threading.Lock()

    @property
    def speed(self) -> float:
        """Demo seconds per real second."""
        return self._speed

    def start(self) -> None:
        """Let time run."""
        with self._lock:
            if self._began is None:
                self._began = time.monotonic()

    def set_speed(self, speed: float) -> None:
        """Run at another speed from now on, without a jump."""
        with self._lock:
            self._base = self._now()
            if self._began is not None:
                self._began = time.monotonic()
            self._speed = float(speed)

    def now(self) -> datetime:
        """The demo's time (UTC)."""
        with self._lock:
            return self._now()

    def _now(self) -> datetime:
        if self._began is None:
            return self._base
        return self._base + timedelta(seconds=(time.monotonic() - self._began) * self._speed)

    def time(self) -> float:
        """The demo's time in seconds since the epoch."""
        return self.now().timestamp()

    def advance(self, seconds: float) -> None:
        """Jump ahead."""
        with self._lock:
            self._base += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of demo time."""
        if seconds > 0:
            time.sleep(seconds / self._speed)


# --- output -------------------------------------------------------------------------------------


class _Terminal:
    """Lines for the record, and on a terminal one status line below them that keeps changing."""

    def __init__(self, out: TextIO, *, quiet: bool):
        self.out = out
        self.quiet = quiet
        self.live = not quiet and _isatty(out)
        self._status = ""
        self._lock = threading.Lock()

    def say(self, line: str = "", *, always: bool = False) -> None:
        """Print a line (unless quiet, or ``always``)."""
        if self.quiet and not always:
            return
        with self._lock:
            self._clear()
            print(line, file=self.out, flush=True)
            self._draw()

    def status(self, text: str) -> None:
        """Show ``text`` on the status line (a terminal only)."""
        if not self.live:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        with self._lock:
            self._clear()
            self._status = text[:width]
            self._draw()

    def close(self) -> None:
        """Remove the status line."""
        with self._lock:
            self._clear()
            self._status = ""

    def _clear(self) -> None:
        if self.live and self._status:
            self.out.write("\r" + " " * len(self._status) + "\r")

    def _draw(self) -> None:
        if self.live and self._status:
            self.out.write(self._status)
            self.out.flush()

    def width(self) -> int | None:
        """The terminal's width, or None when the output is not a terminal."""
        return shutil.get_terminal_size((100, 20)).columns if _isatty(self.out) else None


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _hhmm(moment: datetime) -> str:
    return _aware(moment).astimezone(BERLIN).strftime("%H:%M")


def _at(hhmm: str) -> datetime:
    hour, minute = (int(part) for part in hhmm.split(":"))
    return datetime(DAY.year, DAY.month, DAY.day, hour, minute, tzinfo=BERLIN)


class _Announcer:
    """The demo's plugin: prints each decision of the engine as it is committed."""

    def __init__(self, terminal: _Terminal, names: Mapping[str, str]):
        self.terminal = terminal
        self.names = names
        self.seen: Counter[str] = Counter()

    @hookimpl
    def escalation_decided(self, system: str, ticket_id: str, history: list[Mapping[str, Any]]) -> None:
        """Print each audit entry worth a line: moves, breaches, notifications, acknowledgements."""
        for entry in history:
            kind = str(entry.get("kind"))
            self.seen[kind] += 1
            if kind not in _SHOWN:
                continue
            self.terminal.say(self.line(system, ticket_id, entry))

    def line(self, system: str, ticket_id: str, entry: Mapping[str, Any]) -> str:
        """``09:42  jira SUP-3      1->2  escalated      reason`` (the reason cut to the terminal)."""
        at = datetime.fromisoformat(str(entry["at"]))
        before, after = entry.get("from_tier"), entry.get("to_tier")
        if entry.get("kind") in _MOVES and before is not None and after is not None:
            tiers = f"{before}->{after}"
        elif before is not None or after is not None:
            tiers = f"  {before if before is not None else after}"
        else:
            tiers = ""
        ticket = self.names.get(f"{system}:{ticket_id}", f"{system} {ticket_id}")
        head = f"{_hhmm(at)}  {ticket:<15} {tiers:<5} {entry['kind']:<13} "
        reason = " ".join(str(entry.get("reason", "")).split())
        width = self.terminal.width()
        if width is not None and len(head) + len(reason) > width - 1:
            reason = reason[: max(20, width - 4 - len(head))] + "..."
        return head + reason


# --- the script ---------------------------------------------------------------------------------


@dataclass
class _Step:
    at: str
    scenario: str
    text: str
    act: Callable[[_Day], None]


@dataclass
class _Day:
    """What the script needs while it plays: the sandboxes, the clock, the tickets it made."""

    jira: Any
    zendesk: Any
    mail: Any
    clock: DemoClock
    tickets: dict[str, str] = field(default_factory=dict)  # scenario -> Jira key or Zendesk id
    names: dict[str, str] = field(default_factory=dict)  # "system:id" -> what the output calls it
    outage: Any = None  # the injected fault
    outage_began: datetime | None = None
    outage_ended: datetime | None = None
    customer_mail: str | None = None

    def jira_issue(self, scenario: str, summary: str, description: str, *, severity: str, users: int) -> None:
        """Dana, a customer, opens an issue in the SUP service desk."""
        issue = self.jira.create_issue(
            "SUP", summary, description=description, priority="Medium", as_user="dana",
            fields={_JIRA_SEVERITY: {"value": severity}, _JIRA_USERS: users},
        )
        self.tickets[scenario] = issue["key"]
        self.names[f"jira:{issue['key']}"] = f"jira {issue['key']}"

    def zendesk_ticket(self, scenario: str, subject: str, description: str, *, severity: str,
                       users: int, tags: tuple[str, ...] = ()) -> None:
        """Dana, a customer, opens a Zendesk ticket."""
        ticket = self.zendesk.create_ticket(
            subject, description, requester="dana", tags=tags,
            custom_fields={_ZENDESK_SEVERITY: f"severity_{severity}", _ZENDESK_USERS: users},
        )
        self.tickets[scenario] = str(ticket["id"])
        self.names[f"zendesk:{ticket['id']}"] = f"zendesk #{ticket['id']}"

    def jira_comment(self, scenario: str, who: str, text: str) -> None:
        """A public comment on the scenario's issue."""
        self.jira.add_comment(self.tickets[scenario], text, as_user=who)

    def jira_label(self, scenario: str, who: str, label: str) -> None:
        """Add a label, keeping the others."""
        self.jira.update_issue(self.tickets[scenario], update={"labels": [{"add": label}]}, as_user=who)

    def jira_done(self, scenario: str, who: str) -> None:
        """Resolve the scenario's issue."""
        self.jira.transition(self.tickets[scenario], "Done", as_user=who)

    def acknowledge_page(self, scenario: str, address: str) -> None:
        """Click (POST) the acknowledge link of the latest notice mail to ``address`` about the ticket."""
        ticket = self.tickets[scenario]
        pages = [m for m in self.mail.sent() if address in m.rcpt_tos and f" {ticket}," in m.subject]
        if not pages:
            raise RuntimeError(f"no notice about {ticket} reached {address}")
        found = _ACK_LINK.search(pages[-1].message.get_content())
        if found is None:
            raise RuntimeError(f"the notice about {ticket} to {address} carries no acknowledge link")
        request = urllib.request.Request(found.group(1), data=b"", method="POST",
                                         headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def zendesk_comment(self, scenario: str, who: str, text: str) -> None:
        """A public comment by an agent."""
        self.zendesk.add_comment(int(self.tickets[scenario]), text, as_user=who)

    def zendesk_solve(self, scenario: str, who: str) -> None:
        """Solve the scenario's ticket."""
        self.zendesk.update_ticket(int(self.tickets[scenario]), status="solved", as_user=who)

    def start_outage(self) -> None:
        """The Zendesk API answers every ticket update with 503 until :meth:`end_outage`."""
        self.outage = self.zendesk.inject_fault(503, count=1_000_000, method="PUT", path="/api/v2/tickets/*")
        self.outage_began = self.clock.now()

    def end_outage(self) -> None:
        """The Zendesk API answers again."""
        self.zendesk.clear_faults()
        self.outage_ended = self.clock.now()

    def email_in(self) -> None:
        """Erik, an email-only customer, writes to the support address."""
        message = EmailMessage()
        message["From"] = "Erik Lund <erik@fabrikam.example>"
        message["To"] = "support@northwind.example"
        message["Subject"] = "Cannot download the March invoices"
        message["Message-ID"] = f"<{uuid.uuid4().hex}@fabrikam.example>"
        message["Date"] = format_datetime(self.clock.now())
        message.set_content(
            "Hello,\n\nsince this morning the download of our March invoices fails with an error.\n\n"
            "Steps to reproduce: open Billing, choose March, click Download all.\n\nErik Lund\nFabrikam\n"
        )
        self.customer_mail = message["Message-ID"]
        self.mail.deliver(message, to="support")


def _script() -> list[_Step]:
    """The day, in order of time (Berlin)."""
    steps = [
        _Step("08:35", "breach", "Dana opens a Jira ticket: the invoice PDF shows the wrong VAT rate "
              "(medium, 1 user); nobody at tier 1 picks it up",
              lambda d: d.jira_issue("breach", "Invoice PDF shows the wrong VAT rate",
                                     "The VAT line says 19% for Austrian customers.\n"
                                     "Steps to reproduce: open invoice 2026-0311 as PDF.",
                                     severity="medium", users=1)),
        _Step("08:50", "vip", "Dana (an enterprise-plus customer) opens a Zendesk ticket: the "
              "shipments API returns 500 (high, 1 user)",
              lambda d: d.zendesk_ticket("vip", "Shipments API returns 500 for our warehouse",
                                         "Every POST to /shipments fails since 08:00.\n"
                                         "Steps to reproduce: POST any shipment with a pallet id.",
                                         severity="high", users=1, tags=("enterprise-plus",))),
        _Step("09:05", "vip", "Priya answers the VIP customer (a public comment: acknowledged)",
              lambda d: d.zendesk_comment("vip", "priya", "Hello Dana, I am on it and will update you within the hour.")),
        _Step("09:15", "outage", "Dana opens a Jira ticket: outage, the data sync stopped for all "
              "EU customers (critical, 240 users); the on-call is paged",
              lambda d: d.jira_issue("outage", "Outage: data sync stopped for all EU customers",
                                     "No data has synced since 09:05. All EU tenants are affected.",
                                     severity="critical", users=240)),
        _Step("09:32", "repeat", "Tomas, on call, clicks the acknowledge link in his latest page "
              "(acknowledged: the pages stop)",
              lambda d: d.acknowledge_page("outage", "tomas@northwind.example")),
        _Step("09:45", "outage", "Tomas labels the outage bug-confirmed",
              lambda d: d.jira_label("outage", "tomas", "bug-confirmed")),
        _Step("09:55", "outage", "Tomas answers for engineering (acknowledged)",
              lambda d: d.jira_comment("outage", "tomas", "Engineering has it: a fix for the queue is being deployed.")),
        _Step("10:00", "missing", "Dana opens a Jira ticket: reports export times out (medium, 3 users), "
              "without steps to reproduce",
              lambda d: d.jira_issue("missing", "Reports export times out",
                                     "The export of the yearly report never finishes.",
                                     severity="medium", users=3)),
        _Step("10:05", "missing", "Mia answers (acknowledged)",
              lambda d: d.jira_comment("missing", "mia", "Thanks Dana, we are looking into the export.")),
        _Step("10:10", "deescalation", "Dana opens a Zendesk ticket: checkout fails for customers in "
              "Spain (critical, 20 users)",
              lambda d: d.zendesk_ticket("deescalation", "Checkout fails for customers in Spain",
                                         "Spanish cards are declined at checkout.",
                                         severity="critical", users=20)),
        _Step("10:20", "deescalation", "Tomas answers the Spain ticket (acknowledged)",
              lambda d: d.zendesk_comment("deescalation", "tomas", "Investigating with the payment provider.")),
        _Step("10:30", "missing", "Mia finds 15 users affected: the matrix now wants the specialists",
              lambda d: d.jira.update_issue(d.tickets["missing"], fields={_JIRA_USERS: 15}, as_user="mia")),
        _Step("10:45", "deescalation", "Tomas tags workaround-provided (only 35 minutes at tier 3)",
              lambda d: d.zendesk.update_ticket(int(d.tickets["deescalation"]), additional_tags=["workaround-provided"],
                                                as_user="tomas")),
        _Step("10:50", "missing", "Dana answers Escalier's question with the steps to reproduce",
              lambda d: d.jira_comment("missing", "dana", "Steps to reproduce: Reports > Yearly > Export as CSV, "
                                                          "then wait; it stops after 60 seconds.")),
        _Step("11:00", "upstream", "The Zendesk API starts answering 503 to every ticket update",
              lambda d: d.start_outage()),
        _Step("11:05", "deadline", "Dana opens a Jira ticket: the data migration must finish before "
              "Friday's contract date (medium, 1 user)",
              lambda d: d.jira_issue("deadline", "Data migration must finish before Friday's contract date",
                                     "Our contract renewal depends on the migration.\n"
                                     "Steps to reproduce: not a defect; a deadline.",
                                     severity="medium", users=1)),
        _Step("11:10", "deadline", "Mia answers (acknowledged)",
              lambda d: d.jira_comment("deadline", "mia", "Understood; checking the migration plan.")),
        _Step("11:15", "breach", "Priya takes the VAT ticket at tier 2 (acknowledged)",
              lambda d: d.jira_comment("breach", "priya", "Specialists here: the Austrian tax table is outdated.")),
        _Step("11:20", "deescalation", "Tomas confirms the workaround on the Spain ticket",
              lambda d: d.zendesk_comment("deescalation", "tomas",
                                          "Workaround confirmed by the customer: cards go through again.")),
        _Step("11:30", "deadline", "Mia tags the migration ticket deadline-conflict",
              lambda d: d.jira_label("deadline", "mia", "deadline-conflict")),
        _Step("11:40", "missing", "Priya takes the export ticket at tier 2 (acknowledged)",
              lambda d: d.jira_comment("missing", "priya", "Reproduced with the steps; working on it.")),
        _Step("11:45", "upstream", "The Zendesk API answers again", lambda d: d.end_outage()),
        _Step("12:15", "vip", "Priya solves the VIP ticket", lambda d: d.zendesk_solve("vip", "priya")),
        _Step("12:30", "outage", "Tomas resolves the outage: the fix is deployed",
              lambda d: d.jira_done("outage", "tomas")),
        _Step("12:45", "deadline", "Mia resolves the migration ticket: Amara agreed on a plan",
              lambda d: d.jira_done("deadline", "mia")),
        _Step("13:00", "email", "Erik (Fabrikam, email only) writes to support@northwind.example: the "
              "March invoices do not download",
              lambda d: d.email_in()),
        _Step("14:00", "breach", "Priya resolves the VAT ticket", lambda d: d.jira_done("breach", "priya")),
        _Step("14:20", "missing", "Priya resolves the export ticket", lambda d: d.jira_done("missing", "priya")),
        _Step("14:40", "deescalation", "Priya solves the Spain ticket",
              lambda d: d.zendesk_solve("deescalation", "priya")),
    ]
    return sorted(steps, key=lambda step: step.at)


_SCENARIOS = {
    "breach": "tier 1 ticket unresolved past its time frame",
    "vip": "VIP customer with a high-severity problem",
    "outage": "outage hitting many users: tier 3, then engineering",
    "repeat": "notification repeated until acknowledged",
    "missing": "missing information asked for, answered, then moved",
    "deadline": "deadline conflict: hierarchical escalation",
    "deescalation": "de-escalation after a workaround",
    "email": "email-only customer",
    "upstream": "upstream outage ridden out by the outbox",
}


# --- the report ---------------------------------------------------------------------------------


@dataclass
class DemoReport:
    """What the demo did: the checks of its scenarios and the numbers of its summary."""

    workdir: Path
    store_url: str
    interrupted: bool = False
    finished: bool = False
    summarized: bool = False
    seconds: float = 0.0
    tickets: dict[str, str] = field(default_factory=dict)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    reached_tier: dict[int, int] = field(default_factory=dict)
    moves: dict[str, int] = field(default_factory=dict)
    breaches: int = 0
    notifications: int = 0
    missing_information: int = 0
    calls: dict[str, dict[str, int]] = field(default_factory=dict)
    mails_sent: int = 0
    actions_applied: int = 0
    actions_retried: int = 0
    dead_letters: int = 0
    refused_by_outage: int = 0
    urls: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every scenario happened as scripted."""
        return self.finished and bool(self.checks) and all(ok for ok, _ in self.checks.values())


# --- running it ---------------------------------------------------------------------------------


def run_demo(
    *,
    speed: float = DEFAULT_SPEED,
    keep_running: bool = False,
    browser: bool = True,
    db: str | None = None,
    quiet: bool = False,
    out: TextIO = sys.stdout,
) -> DemoReport:
    """Play the demo day; returns its report. Ctrl-C stops it cleanly (``report.interrupted``)."""
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="escalier-demo-"))
    report = DemoReport(workdir=workdir, store_url=db or f"sqlite:///{workdir / 'escalier.db'}")
    terminal = _Terminal(out, quiet=quiet)
    stack: list[Callable[[], None]] = []
    try:
        with _quiet_logs() as problems:
            try:
                _play(report, terminal, stack, speed=speed, keep_running=keep_running, browser=browser)
            except KeyboardInterrupt:
                report.interrupted = True
            finally:
                with _no_interrupts():
                    terminal.close()
                    for undo in reversed(stack):
                        undo()
                    shutil.rmtree(workdir, ignore_errors=True)
        report.problems[:0] = problems
    except KeyboardInterrupt:
        report.interrupted = True
        shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = time.monotonic() - began
    if report.interrupted:
        terminal.say("\ninterrupted: everything is stopped and the temporary directory removed", always=True)
    elif report.finished and not report.summarized:
        _print_summary(report, terminal)
    return report


def _play(report: DemoReport, terminal: _Terminal, stack: list[Callable[[], None]], *,
          speed: float, keep_running: bool, browser: bool) -> None:
    from escalier.connectors.email.sandbox import MailSandbox
    from escalier.connectors.jira.sandbox import JiraSandbox
    from escalier.connectors.zendesk.sandbox import ZendeskSandbox
    from escalier.plugins import get_plugin_manager
    from escalier.runtime.local import LocalDeployment
    from escalier.runtime.retry import RetrySettings

    clock = DemoClock(_at(START), speed=speed)
    secrets = {"jira": uuid.uuid4().hex, "zendesk": uuid.uuid4().hex}
    retries = (0.2, 0.5, 1.0, 2.0)
    jira = JiraSandbox(deployment="cloud", token=_TOKEN, webhook_secret=secrets["jira"],
                       webhook_retry_delays=retries, clock=clock.now)
    zendesk = ZendeskSandbox(token=_TOKEN, webhook_secret=secrets["zendesk"],
                             webhook_retry_delays=retries, clock=clock.now)
    mail = MailSandbox(users={user: _MAIL_PASSWORD for user in _MAIL_USERS}, clock=clock.now)
    # Amara, the Head of Support, is not among the people the Jira sandbox seeds.
    jira.add_user("amara", "Amara Okafor", email="amara@northwind.example", account_id=_AMARA_JIRA)
    for sandbox in (jira, zendesk, mail):
        sandbox.start()
        stack.append(sandbox.stop)
    policy_path = report.workdir / "escalier.yaml"
    policy_path.write_text(demo_policy(jira.url, zendesk.url, mail.smtp_port, mail.imap_port))
    environ = {
        "JIRA_API_TOKEN": _TOKEN, "JIRA_WEBHOOK_SECRET": secrets["jira"],
        "ZENDESK_API_TOKEN": _TOKEN, "ZENDESK_WEBHOOK_SECRET": secrets["zendesk"],
        "SMTP_PASSWORD": _MAIL_PASSWORD, "IMAP_PASSWORD": _MAIL_PASSWORD,
        "ESCALIER_ACK_SECRET": uuid.uuid4().hex,
    }
    day = _Day(jira=jira, zendesk=zendesk, mail=mail, clock=clock)
    pm = get_plugin_manager(load_entrypoints=False)
    announcer = _Announcer(terminal, day.names)
    pm.register(announcer, name="escalier-demo")
    deployment = LocalDeployment(
        policy_path, report.store_url, sandboxes={"jira": jira, "zendesk": zendesk},
        environ=environ, clock=clock, plugin_manager=pm, worker_id="demo-worker",
        retry=RetrySettings(**_DEMO_RETRIES),  # type: ignore[arg-type]
        receiver=_receiver_overrides(),
    )
    stack.append(deployment.close)
    report.urls = {
        "jira": jira.url, "zendesk": zendesk.url,
        "smtp": f"{mail.host}:{mail.smtp_port}", "imap": f"{mail.host}:{mail.imap_port}",
        "receiver": deployment.receiver_url,
        "dashboard": dashboard_url(deployment.receiver_url),
        "policy": str(policy_path),
    }
    _print_start(report, terminal, clock)
    deployment.run_worker()
    if browser and _has_display():
        webbrowser.open(report.urls["dashboard"], new=2)

    clock.start()
    steps = _script()
    for index, step in enumerate(steps):
        _wait_until(clock, _at(step.at), terminal, f"next: {step.at}  {step.text}")
        terminal.say(f"{step.at}  > {step.text}")
        step.act(day)
    _wait_until(clock, _at(END), terminal, f"next: {END}  the day ends")
    terminal.say(f"{END}  > the day ends; waiting for the last updates to reach the sandboxes")
    _settle(deployment, [jira, zendesk], timeout=30.0)
    report.tickets = dict(day.tickets)
    deployment.stop_worker()  # before the store is read; the receiver and its dashboard stay up
    _measure(report, deployment, day, announcer)
    report.finished = True
    if keep_running:
        _print_summary(report, terminal)
        clock.set_speed(1.0)
        deployment.run_worker()  # a ticket you change in a sandbox now is decided as it happens
        terminal.say(f"\nstill running on a real-time clock: {report.urls['dashboard']}  (Ctrl-C to stop)",
                     always=True)
        while True:
            time.sleep(0.5)
            terminal.status(f"{_hhmm(clock.now())}  Ctrl-C to stop")


def demo_policy(jira_url: str, zendesk_url: str, smtp_port: int, imap_port: int) -> str:
    """The shipped demo policy with the sandboxes' addresses in place of the ports it names."""
    text = POLICY_PATH.read_text(encoding="utf-8")
    for key, value in (("jira", jira_url), ("zendesk", zendesk_url),
                       ("smtp", f"port: {smtp_port}"), ("imap", f"port: {imap_port}")):
        placeholder = _POLICY_PORTS[key]
        # The header's comments name the ports too; only the connector settings are replaced.
        settings = [line for line in text.splitlines() if placeholder in line and not line.lstrip().startswith("#")]
        if len(settings) != 1:
            raise RuntimeError(f"{POLICY_PATH} names '{placeholder}' in {len(settings)} settings, not 1")
        text = text.replace(settings[0], settings[0].replace(placeholder, value))
    return text


def dashboard_url(receiver_url: str) -> str:
    """Where to look while the demo runs: the dashboard where the receiver serves one, else /metrics."""
    return f"{receiver_url}/dashboard/" if _dashboard_available() else f"{receiver_url}/metrics"


def _dashboard_available() -> bool:
    from escalier.webhooks import ReceiverSettings

    return "dashboard" in {f.name for f in fields(ReceiverSettings)}


def _receiver_overrides() -> dict[str, Any]:
    # At a few hundred demo seconds per real second, a webhook that waits half a second in a queue
    # is minutes old: the replay windows are widened to hours of demo time.
    window = timedelta(hours=3)
    overrides: dict[str, Any] = {"replay_tolerance": window, "payload_max_age": window, "dedupe_window": window}
    if _dashboard_available():
        overrides.update(dashboard=True, dashboard_refresh_seconds=2)
    return overrides


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _wait_until(clock: DemoClock, moment: datetime, terminal: _Terminal, upcoming: str) -> None:
    while True:
        now = clock.now()
        left = (moment - now).total_seconds()
        if left <= 0:
            return
        terminal.status(f"{_hhmm(now)}  {upcoming}")
        time.sleep(min(0.2, left / clock.speed))


def _settle(deployment: Any, sandboxes: list[Any], *, timeout: float) -> None:
    """Wait (real time) until webhooks are delivered and nothing is pending in the store."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        delivered = all(s.wait_for_deliveries(timeout=0.5) for s in sandboxes)
        if delivered and deployment.idle():
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 0.5:
                return
        else:
            quiet_since = None
        time.sleep(0.1)


@contextmanager
def _quiet_logs() -> Iterator[list[str]]:
    """Keep Escalier's and werkzeug's log records off the terminal; collect warnings and errors."""
    problems: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg in _EXPECTED_WARNINGS:
                return
            error = getattr(record, "error", None)
            problems.append(f"{record.levelname.lower()} {record.msg}" + (f": {error}" if error else ""))

    handler = _Collect(logging.WARNING)
    loggers = [logging.getLogger("escalier"), logging.getLogger("werkzeug")]
    saved = [(lg, lg.propagate, lg.level) for lg in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
        # At WARNING werkzeug finds a handler of its level and adds no console handler of its own
        # (it would print every request).
        logger.setLevel(logging.WARNING)
    try:
        yield problems
    finally:
        for logger, propagate, level in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate
            logger.setLevel(level)


@contextmanager
def _no_interrupts() -> Iterator[None]:
    """Let a second Ctrl-C wait until the clean-up in hand is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --- what happened ------------------------------------------------------------------------------


def _measure(report: DemoReport, deployment: Any, day: _Day, announcer: _Announcer) -> None:
    """Fill the report from the store and the sandboxes, and check each scenario."""
    from sqlalchemy import create_engine, select

    from escalier.store.schema import audit, dead_letters, escalations, outbox

    engine = create_engine(report.store_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(escalations.c.system, escalations.c.ticket_id, audit)
                .join(audit, audit.c.escalation_id == escalations.c.id)
                .order_by(audit.c.id)
            ).mappings().all()
            actions = connection.execute(select(outbox)).mappings().all()
            dead = connection.execute(select(dead_letters)).mappings().all()
    finally:
        engine.dispose()
    history: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        entry = {**row, "at": _aware(row["at"])}
        history.setdefault(f"{row['system']}:{row['ticket_id']}", []).append(entry)
    reached: dict[int, set[str]] = {}
    for key, entries in history.items():
        for entry in entries:
            if entry["kind"] in ("opened", "escalated") and (entry["to_tier"] or 0) > 1:
                reached.setdefault(entry["to_tier"], set()).add(key)
    report.reached_tier = {tier: len(keys) for tier, keys in sorted(reached.items())}
    kinds = Counter(str(row["kind"]) for row in rows)
    report.moves = {kind: kinds[kind] for kind in _MOVES}
    report.breaches = kinds["sla-breach"]
    report.notifications = kinds["notified"]
    report.missing_information = kinds["missing-information"]
    report.actions_applied = sum(1 for a in actions if a["state"] == "done")
    report.actions_retried = sum(1 for a in actions if (a["attempts"] or 0) > 1)
    report.dead_letters = len(dead)
    report.calls = {"jira": day.jira.calls(), "zendesk": day.zendesk.calls(), "mail": day.mail.calls()}
    report.mails_sent = len(day.mail.sent())
    if day.outage is not None:
        report.refused_by_outage = 1_000_000 - day.outage.count
    report.checks = _check(day, history, actions, dead)
    for name, sandbox in (("jira", day.jira), ("zendesk", day.zendesk)):
        for delivery in sandbox.deliveries():
            if delivery["state"] != "delivered":
                statuses = ", ".join(str(a.get("status") or a.get("error")) for a in delivery["attempts"])
                report.problems.append(f"{name} webhook {delivery['event']} {delivery['state']} ({statuses})")


def _check(day: _Day, history: Mapping[str, list[Mapping[str, Any]]], actions: list[Mapping[str, Any]],
           dead: list[Mapping[str, Any]]) -> dict[str, tuple[bool, str]]:
    """Each scenario against the sandboxes and the store: (as scripted?, what was found)."""
    checks: dict[str, tuple[bool, str]] = {}

    def entries(scenario: str, system: str) -> list[Mapping[str, Any]]:
        ticket = day.tickets.get(scenario)
        return history.get(f"{system}:{ticket}", []) if ticket else []

    def moved(found: list[Mapping[str, Any]], kind: str, to_tier: int | None = None) -> Mapping[str, Any] | None:
        return next((e for e in found if e["kind"] == kind and (to_tier is None or e["to_tier"] == to_tier)), None)

    def jira_place(scenario: str) -> tuple[set[str], set[str], str | None]:
        fields_ = day.jira.issue(day.tickets[scenario])["fields"]
        components = {c["name"] for c in fields_.get("components") or ()}
        assignee = (fields_.get("assignee") or {}).get("displayName")
        return components, set(fields_.get("labels") or ()), assignee

    def attempt(scenario: str, test: Callable[[], tuple[bool, str]]) -> None:
        try:
            checks[scenario] = test()
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            checks[scenario] = (False, f"could not be checked: {exc!r}")

    def breach() -> tuple[bool, str]:
        found = entries("breach", "jira")
        breached = moved(found, "sla-breach", 1)
        up = moved(found, "escalated", 2)
        components, labels, _ = jira_place("breach")
        ok = bool(breached and up and "stale-tier-1" in (up["criteria"] or ()) and "tier-2" in labels)
        at = f"breached at {_hhmm(breached['at'])}" if breached else "no breach"
        return ok, (f"{day.tickets['breach']}: acknowledge target {at}; "
                    f"{'moved to tier 2 at ' + _hhmm(up['at']) if up else 'not moved'}; "
                    f"in Jira: {', '.join(sorted(components))}, labels {', '.join(sorted(labels))}")

    def vip() -> tuple[bool, str]:
        found = entries("vip", "zendesk")
        up = moved(found, "escalated", 2)
        ticket = day.zendesk.ticket(int(day.tickets["vip"]))
        ok = bool(up and "vip-high" in (up["criteria"] or ())
                  and ticket["group_id"] == _ZENDESK_GROUPS["tier-2"]
                  and ticket["assignee_id"] == _PEOPLE_ZENDESK["priya"])
        return ok, (f"zendesk #{day.tickets['vip']}: {'tier 2 by vip-high at ' + _hhmm(up['at']) if up else 'not moved'}; "
                    f"in Zendesk: group {ticket['group_id']}, assignee {ticket['assignee_id']}, priority {ticket['priority']}")

    def outage() -> tuple[bool, str]:
        found = entries("outage", "jira")
        top = moved(found, "opened", 3) or moved(found, "escalated", 3)
        engineering = moved(found, "functional")
        components, labels, assignee = jira_place("outage")
        ok = bool(top and engineering and "Platform" in components and "tier-3" in labels)
        return ok, (f"{day.tickets['outage']}: {'tier 3 at ' + _hhmm(top['at']) if top else 'never at tier 3'}, "
                    f"{'engineering at ' + _hhmm(engineering['at']) if engineering else 'no engineering path'}; "
                    f"in Jira: {', '.join(sorted(components))}, assignee {assignee}")

    def repeat() -> tuple[bool, str]:
        found = entries("outage", "jira")
        acknowledged = moved(found, "acknowledged")
        before = [e for e in found if e["kind"] == "notified"
                  and (acknowledged is None or e["at"] <= acknowledged["at"])]
        key = day.tickets["outage"]
        # The oncall channel's pages, by mail over SMTP: the opening page and each repeat.
        pages = [m for m in day.mail.sent() if _ONCALL in m.rcpt_tos and f" {key}," in m.subject
                 and (acknowledged is None or _aware(m.accepted_at) <= acknowledged["at"])]
        by_link = acknowledged is not None and acknowledged["actor"] == "tomas"
        ok = bool(acknowledged and by_link and len(before) >= 3 and len(pages) > len(before))
        return ok, (f"{key}: {len(before)} repeats before "
                    f"{'the acknowledgement by ' + str(acknowledged['actor']) + ' at ' + _hhmm(acknowledged['at']) if acknowledged else 'no acknowledgement'}"
                    f"; {len(pages)} pages mailed to {_ONCALL} until then")

    def missing() -> tuple[bool, str]:
        found = entries("missing", "jira")
        asked = moved(found, "missing-information")
        up = moved(found, "escalated", 2)
        comments = day.jira.comments(day.tickets["missing"])
        public_ask = [c for c in comments if "Steps to reproduce" in str(c.get("body"))
                      and c.get("author", {}).get("accountId") == day.jira.service_account]
        ok = bool(asked and up and asked["at"] < up["at"] and public_ask)
        return ok, (f"{day.tickets['missing']}: {'asked at ' + _hhmm(asked['at']) if asked else 'never asked'}, "
                    f"{'moved to tier 2 at ' + _hhmm(up['at']) if up else 'not moved'}; "
                    f"Escalier's question is {'in' if public_ask else 'missing from'} the issue's comments")

    def deadline() -> tuple[bool, str]:
        found = entries("deadline", "jira")
        up = moved(found, "hierarchical")
        ok = bool(up and "contract-conflict" in (up["criteria"] or ()))
        return ok, (f"{day.tickets['deadline']}: "
                    f"{'to the Head of Support at ' + _hhmm(up['at']) if up else 'no hierarchical escalation'}")

    def deescalation() -> tuple[bool, str]:
        found = entries("deescalation", "zendesk")
        down = moved(found, "deescalated", 2)
        tagged = _at("10:45")
        ticket = day.zendesk.ticket(int(day.tickets["deescalation"]))
        ok = bool(down and down["at"] >= tagged + timedelta(minutes=15)
                  and ticket["group_id"] == _ZENDESK_GROUPS["tier-2"])
        return ok, (f"zendesk #{day.tickets['deescalation']}: "
                    f"{'back to tier 2 at ' + _hhmm(down['at']) if down else 'not de-escalated'} "
                    f"(tagged at 10:45, an hour at tier 3 needed); in Zendesk: group {ticket['group_id']}")

    def email() -> tuple[bool, str]:
        found = [e for key, es in history.items() if key.startswith("email:") for e in es]
        up = moved(found, "escalated", 2)
        acknowledgement = day.mail.mailbox("erik@fabrikam.example")
        escalated = [m for m in day.mail.mailbox("specialists") if "tier 2" in m.subject.lower()]
        placed = day.mail.mailbox("tier1")
        ok = bool(up and acknowledgement and escalated and placed)
        return ok, (f"{len(acknowledgement)} acknowledgement to Erik, {len(placed)} mail to tier1@, "
                    f"{len(escalated)} escalation mail to specialists@"
                    f"{' at ' + _hhmm(up['at']) if up else ''}")

    def upstream() -> tuple[bool, str]:
        refused = 1_000_000 - day.outage.count if day.outage is not None else 0
        zendesk_rows = [a for a in actions if a["system"] == "zendesk"]
        late = [a for a in zendesk_rows if a["applied_at"] is not None and day.outage_ended is not None
                and _aware(a["applied_at"]) >= day.outage_ended and (a["attempts"] or 0) > 1]
        stuck = [a for a in zendesk_rows if a["state"] != "done"]
        ok = bool(refused and late and not stuck and not dead)
        return ok, (f"Zendesk refused {refused} updates with 503; {len(late)} actions delivered after it "
                    f"answered again; {len(stuck)} not delivered, {len(dead)} dead letters")

    for name, test in (("breach", breach), ("vip", vip), ("outage", outage), ("repeat", repeat),
                       ("missing", missing), ("deadline", deadline), ("deescalation", deescalation),
                       ("email", email), ("upstream", upstream)):
        attempt(name, test)
    return checks


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the store writes UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- printing -----------------------------------------------------------------------------------


def _print_start(report: DemoReport, terminal: _Terminal, clock: DemoClock) -> None:
    urls = report.urls
    minutes = clock.speed / 60
    pace = f"1 s = {minutes:g} min" if minutes >= 1 else f"1 s = {clock.speed:g} s"
    say = terminal.say
    say(f"Escalier demo: a support day at Northwind, {DAY:%a %d %b %Y}, Berlin time, on a fast clock ({pace})")
    say("")
    say(f"  Jira (Cloud) sandbox  {urls['jira']}    project SUP, token {_TOKEN}")
    say(f"  Zendesk sandbox       {urls['zendesk']}")
    say(f"  mail sandbox          SMTP {urls['smtp']}, IMAP {urls['imap']} (password {_MAIL_PASSWORD})")
    say(f"  receiver              {urls['receiver']}/webhooks/<jira|zendesk>")
    label = "dashboard" if urls["dashboard"].endswith("/dashboard/") else "metrics"
    say(f"  {label:<21} {urls['dashboard']}", always=True)
    say(f"  store                 {report.store_url}")
    say(f"  policy                {urls['policy']}  (escalier/demo.yaml with these ports)")
    say("")
    say("time   ticket          tiers what          why")


def _print_summary(report: DemoReport, terminal: _Terminal) -> None:
    report.summarized = True
    say = terminal.say

    def always(line: str = "") -> None:
        say(line, always=True)

    passed = sum(1 for ok, _ in report.checks.values() if ok)
    always("")
    always(f"Summary ({report.seconds:.0f} s)")
    always(f"  scenarios as scripted: {passed} of {len(report.checks)}")
    for name, (ok, found) in report.checks.items():
        always(f"    {'ok  ' if ok else 'FAIL'}  {_SCENARIOS[name]}: {found}")
    tiers = ", ".join(f"tier {tier}: {count}" for tier, count in report.reached_tier.items()) or "none"
    always(f"  escalations by tier reached: {tiers}")
    always(f"  moves: {report.moves.get('escalated', 0)} up a tier, {report.moves.get('functional', 0)} to a "
           f"department, {report.moves.get('hierarchical', 0)} to management, "
           f"{report.moves.get('deescalated', 0)} down a tier")
    always(f"  breaches caught: {report.breaches}; missing information asked: {report.missing_information}; "
           f"notifications: {report.notifications}")
    for name in ("jira", "zendesk"):
        calls = report.calls.get(name, {})
        writes = sum(n for route, n in calls.items() if not route.startswith("GET "))
        always(f"  {name} API calls: {sum(calls.values())} ({writes} writes)")
    mail_calls = report.calls.get("mail", {})
    imap = sum(n for command, n in mail_calls.items() if command.startswith("IMAP "))
    always(f"  mails sent: {report.mails_sent} over SMTP; IMAP commands: {imap}")
    always(f"  outbox: {report.actions_applied} actions applied, {report.actions_retried} retried, "
           f"{report.dead_letters} dead letters; 503 answers during the Zendesk outage: {report.refused_by_outage}")
    if report.problems:
        always(f"  warnings and errors logged: {len(report.problems)}")
        for problem, count in Counter(report.problems).most_common(5):
            always(f"    {count} x {problem}")
    always("")
    always("What to try next:")
    always(f"  escalier check-config {_shown_path(POLICY_PATH)}     the policy the demo played")
    always("  escalier demo --keep-running                  stay up afterwards and look around:")
    always("      curl -s <sandbox>/_sandbox/calls            the calls per endpoint Escalier made")
    always("      curl -s <sandbox>/_sandbox/deliveries       the webhooks the sandbox sent")
    always("  escalier parse jira delivery.json             what Escalier reads from a captured webhook")
    always("  escalier simulate examples/escalier.yaml examples/tickets/outage-vip.json")
    always("  escalier sandbox jira                         a Jira of your own in memory")
    if report.urls:
        always(f"  (this run: Jira {report.urls['jira']}, Zendesk {report.urls['zendesk']}, "
               f"dashboard {report.urls['dashboard']})")


def _shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
