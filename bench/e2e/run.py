"""End-to-end bench: the Zendesk sandbox -> receiver -> worker -> sandbox, with 10,000 open escalations.

    python bench/e2e/run.py [--rate 20] [--escalating 1] [--open 10000] [--duration 60] [--json out.json]

The measured system is what production runs: ``escalier serve POLICY --db sqlite:///... --bind
127.0.0.1:PORT`` (gunicorn, and ``escalier worker`` as its child process), started as a
subprocess with a temporary SQLite store. The Zendesk sandbox runs in this process, because the
people's changes go through its Python helpers (its control API has no endpoint for them) and
because timing Escalier's updates needs a hook in its request handling: the moment an update by
Escalier's user is applied is the moment it is visible upstream. Zendesk's Update Ticket limits
are on (100 updates a minute per account, 30 per user and ticket per 10 minutes), and the
account-wide request limit is ``--account-limit`` a minute (700 by default, Zendesk's default).

1. **Open escalations** (``--open``): the tickets are created in the sandbox with its webhooks
   off, then ``escalier serve`` starts: the worker's look for missed changes at start-up (the
   incremental export, 1,000 tickets a page) decides every ticket's creation through the same
   path as a webhook, and the outbox writes each ticket's tier-1 step (bulk jobs of 50). The
   webhooks are pointed at the receiver once the outbox is empty: the echoes of those tier-1
   updates would be Escalier's own changes, which it stores and ignores.
2. **Steady** (``--duration`` s): ``--rate`` changes a second by people on random tickets
   (comments by an agent or the requester, tags added or removed, priority changes), of which
   ``--escalating`` a second raise a tier-1 ticket's severity to critical (a third of them with
   100 users affected: tier 3; the others tier 2). Each of those is timed from the change to
   Escalier's update (the ticket in the tier's group) being applied in the sandbox, and split
   into where the time went: the sandbox's webhook queue, the POST to the receiver, the worker's
   decision (the outbox row's ``created_at``) and the upstream write. Escalating changes go to
   tickets nobody touched in the last 35 seconds (see 4).
3. **Burst** (``--burst``): that many escalations at once, the tier-2 ones first and the tier-3
   ones last, while the people's other changes go on: with the write budget spent, the more
   urgent (tier 3) should land first, and the 429s stay few.
4. **Recent reads** (``--recent``): escalations of tickets a person changed 2 s before (so that
   Escalier has just read them): whether each is still seen.

Reported: reaction p50/p99/max, calls per escalation step (from the sandbox's counts per
endpoint and the action keys), reads per change, 429s answered, ticket updates a minute against
the limit of 100, the CPU each process used, and the machine's idle and steal time
(/proc/stat). Results are printed and written to bench/results/e2e-<time>.json (and ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
TOKEN = "bench-api-token"
SECRET = "bench-signing-secret"
SEVERITY = 360000201
USERS_AFFECTED = 360000202
TIER_GROUPS = {1: 360000101, 2: 360000102, 3: 360000103}
TARGET_P99 = 2.0
UPDATES_LIMIT = 100
# A ticket Escalier read less than this long ago may be decided on its cached copy (see 4.).
FRESH_AFTER = 35.0
PUT = "PUT /api/v2/tickets/{ticket_id}.json"
BULK = "PUT /api/v2/tickets/update_many.json"
GET = "GET /api/v2/tickets/{ticket_id}.json"

POLICY = """\
name: Zendesk end-to-end bench
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
people:
  mia: {{name: Mia Hoffmann, email: mia@northwind.example, zendesk: 360001}}
  priya: {{name: Priya Raman, email: priya@northwind.example, zendesk: 360003}}
  tomas: {{name: Tomas Novak, email: tomas@northwind.example, zendesk: 360004}}
connectors:
  zendesk:
    subdomain: northwind
    url: {url}
    email: escalier@example.com
    token: ${{ZENDESK_API_TOKEN}}
    webhook_secrets: ["${{ZENDESK_WEBHOOK_SECRET}}"]
    groups: {{tier-1: 360000101, tier-2: 360000102, tier-3: 360000103, engineering: 360000110}}
    service_user_id: 360009999
    fields: {{severity: {severity}, users_affected: {users}}}
    writes_per_minute: {writes_per_minute}
    reconcile_every: "{reconcile_every}"
    timeout_seconds: 10
tiers:
  - level: 1
    name: General support
    targets: {{zendesk: {{group: tier-1}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [mia]}}
  - level: 2
    name: Specialists
    targets: {{zendesk: {{group: tier-2, assignee: priya}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [priya]}}
  - level: 3
    name: Critical response
    targets: {{zendesk: {{group: tier-3, assignee: tomas}}}}
    sla: {{resolve: 4h}}
    raci: {{accountable: [tomas]}}
notifications: {{repeat_every: 4h, max_repeats: 1}}
criteria:
  - id: stale
    when: {{tier: [1], unresolved_for: 30m}}
    then: {{to_tier: 2}}
severities: [critical, high, medium, low]
impact:
  - {{name: widespread, users_at_least: 50}}
  - {{name: single, users_at_least: 0}}
matrix:
  critical: {{widespread: {{tier: 3, priority: urgent}}, single: {{tier: 2, priority: high}}}}
  high: {{widespread: {{tier: 2, priority: high}}, single: {{tier: 1, priority: normal}}}}
  medium: {{widespread: {{tier: 1, priority: normal}}, single: {{tier: 1, priority: normal}}}}
  low: {{widespread: {{tier: 1}}, single: {{tier: 1}}}}
"""


def say(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile; None of nothing."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def spread(values: list[float]) -> dict:
    """p50, p99 and max in seconds (rounded to the millisecond), and how many."""
    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 3)
    return {"n": len(values), "p50": r(percentile(values, 0.5)), "p99": r(percentile(values, 0.99)),
            "max": r(max(values) if values else None)}


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def db_time(value: str | None) -> float | None:
    """A time as the store keeps it (UTC, no offset) as a Unix timestamp."""
    if not value:
        return None
    moment = datetime.fromisoformat(str(value))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# --- the machine and the processes -----------------------------------------------------------


def cpu_ticks() -> list[int] | None:
    """The machine's CPU time so far, by kind (Linux's /proc/stat); None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            return [int(n) for n in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def cpu_share(before: list[int] | None, after: list[int] | None) -> dict:
    """How the machine's CPU time went between two :func:`cpu_ticks` readings, in percent."""
    if before is None or after is None:
        return {}
    user, nice, system, idle, iowait, irq, softirq, steal = (b - a for a, b in zip(before, after))
    total = max(1, user + nice + system + idle + iowait + irq + softirq + steal)
    return {"busy_pct": round(100 * (user + nice + system + irq + softirq) / total, 1),
            "idle_pct": round(100 * (idle + iowait) / total, 1),
            "steal_pct": round(100 * steal / total, 1)}


def process_cpu(serve_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of this process, the receiver (gunicorn and its HTTP workers) and the worker."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {"bench_and_sandbox": 0.0, "receiver": 0.0, "worker": 0.0}
    stats: dict[int, tuple[int, float, str]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                    command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks, command)
    if os.getpid() in stats:
        out["bench_and_sandbox"] = stats[os.getpid()][1]
    if serve_pid is None:
        return out
    for pid, (parent, seconds, command) in stats.items():
        if pid == serve_pid or parent == serve_pid:
            out["worker" if " worker " in f" {command} " else "receiver"] += seconds
    return out


# --- the sandbox, timed ------------------------------------------------------------------------


def measured_sandbox(**options: Any):
    """A Zendesk sandbox that notes when each of Escalier's updates is applied and each webhook sent."""
    from escalier.connectors.zendesk.sandbox import SERVICE_USER_ID, ZendeskSandbox

    class MeasuredSandbox(ZendeskSandbox):
        def __init__(self, **kwargs: Any) -> None:
            # (time applied, ticket id, group after, how: "put" or "bulk")
            self.escalier_updates: list[tuple[float, int, int | None, str]] = []
            self.update_spent: list[float] = []  # accepted calls of the Update Ticket endpoint
            # ticket id -> [(time the POST began, time it ended, delivered?)]
            self.sent: dict[int, list[tuple[float, float, bool]]] = {}
            super().__init__(**kwargs)

        def _update(self, ticket: dict[str, Any], body: Any, actor: int, via: str, *, client: str) -> dict:
            audit = super()._update(ticket, body, actor, via, client=client)
            if actor == SERVICE_USER_ID and audit["events"]:
                how = "bulk" if client == "Bulk update" else "put"
                self.escalier_updates.append((time.time(), ticket["id"], ticket["group_id"], how))
            return audit

        def _spend_update(self, ticket_id: int, actor: int) -> dict[str, str]:
            headers = super()._spend_update(ticket_id, actor)
            self.update_spent.append(time.time())
            return headers

        def _deliver(self, delivery: Any) -> None:
            began = time.time()
            super()._deliver(delivery)
            try:
                payload = json.loads(delivery.body)
                ticket = int(payload.get("ticket_id") or str(payload.get("subject", "")).rsplit(":", 1)[-1])
            except (ValueError, TypeError):
                return
            self.sent.setdefault(ticket, []).append((began, time.time(), delivery.state == "delivered"))

        def backlog(self) -> int:
            """Webhooks queued and not yet sent."""
            return self._outbox.qsize()

    return MeasuredSandbox(**options)


# --- the measured system -----------------------------------------------------------------------


class Serve:
    """``escalier serve`` in a subprocess (its own session), its output in a log file."""

    def __init__(self, policy: Path, url: str, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "ZENDESK_API_TOKEN": TOKEN, "ZENDESK_WEBHOOK_SECRET": SECRET}
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "escalier", "serve", str(policy), "--db", url, "--bind", f"127.0.0.1:{port}"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the receiver answers its health check."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"escalier serve exited with {self.process.returncode}; see its log")
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("escalier serve did not answer its health check within a minute")

    def stop(self) -> None:
        """SIGTERM (gunicorn stops its workers and the worker process), then SIGKILL."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()


class Store:
    """Read-only looks into the store the measured system writes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one query (a fresh connection: the store is another process's)."""
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def counts(self) -> dict[str, int]:
        """Open escalations, pending deliveries, and outbox rows by state."""
        out = {"open": self.query("SELECT count(*) FROM escalations WHERE status = 'open'")[0][0],
               "inbox_pending": self.query("SELECT count(*) FROM inbox WHERE state = 'pending'")[0][0]}
        for state, n in self.query("SELECT state, count(*) FROM outbox GROUP BY state"):
            out[f"outbox_{state}"] = n
        return out

    def decided(self, ticket: int, after: float, tier: int) -> float | None:
        """When the first action moving ``ticket`` to ``tier`` was committed after ``after``."""
        stamp = datetime.fromtimestamp(after - 0.001, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        rows = self.query(
            "SELECT min(created_at) FROM outbox WHERE ticket_id = ? AND created_at >= ?"
            " AND json_extract(action, '$.tier') = ?", (str(ticket), stamp, tier))
        return db_time(rows[0][0]) if rows else None


# --- people at work ----------------------------------------------------------------------------


class People:
    """Changes made by people in the sandbox, and the escalations among them."""

    def __init__(self, sandbox: Any, tickets: list[int], seed: int = 5) -> None:
        self.sandbox = sandbox
        self.tickets = tickets
        self.rng = random.Random(seed)
        self.touched: dict[int, float] = {}
        self.escalated: set[int] = set()
        # (ticket, moment of the change, tier expected, phase)
        self.escalations: list[tuple[int, float, int, str]] = []
        self.changes = 0
        self.refused = 0

    def background(self) -> None:
        """One change that needs no escalation step: a comment, a tag, or a priority."""
        ticket = self.rng.choice(self.tickets)
        kind = self.rng.random()
        if kind < 0.3:
            change: dict[str, Any] = {"comment": "Looked into it, more soon.", "public": self.rng.random() < 0.5}
        elif kind < 0.45:
            change = {"comment": "Any news on this?", "as_user": "dana"}
        elif kind < 0.6:
            change = {"additional_tags": [self.rng.choice(["waiting", "billing", "mobile", "eu"])]}
        elif kind < 0.7:
            change = {"remove_tags": [self.rng.choice(["waiting", "billing", "mobile", "eu"])]}
        else:
            change = {"priority": self.rng.choice(["low", "normal", "high"])}
        self._change(ticket, change)

    def fresh(self, now: float) -> int:
        """A tier-1 ticket that nobody changed in the last FRESH_AFTER seconds, set aside for an escalation."""
        while True:
            ticket = self.rng.choice(self.tickets)
            if ticket not in self.escalated and now - self.touched.get(ticket, 0.0) > FRESH_AFTER:
                self.escalated.add(ticket)
                return ticket

    def escalate(self, ticket: int, tier: int, phase: str) -> None:
        """Raise the ticket's severity to critical: tier 3 with 100 users affected, else tier 2."""
        users = 100 if tier == 3 else 3
        began = time.time()
        if self._change(ticket, {"custom_fields": {SEVERITY: "severity_critical", USERS_AFFECTED: users}}):
            self.escalations.append((ticket, began, tier, phase))

    def _change(self, ticket: int, change: dict[str, Any]) -> bool:
        as_user = change.pop("as_user", "mia")
        try:
            self.sandbox.update_ticket(ticket, as_user=as_user, **change)
        except ValueError:  # Zendesk would refuse it (e.g. a closed ticket): a person sees why
            self.refused += 1
            return False
        self.changes += 1
        self.touched[ticket] = time.time()
        return True


def drive(people: People, seconds: float, rate: float, *, escalate_every: int | None,
          progress: Callable[[float], None], done: Callable[[], bool] | None = None) -> dict:
    """``rate`` changes a second for ``seconds`` (or until ``done()``), every ``escalate_every``-th
    an escalation; returns the achieved rate and the worst lag behind the schedule."""
    began = time.time()
    n = 0
    lag = 0.0
    last_report = last_look = began
    while True:
        now = time.time()
        if now - began >= seconds:
            break
        if done is not None and now - last_look >= 0.5:
            last_look = now
            if done():
                break
        due = began + n / rate
        if due > now:
            time.sleep(due - now)
        lag = max(lag, time.time() - due)
        n += 1
        if escalate_every and n % escalate_every == 0:
            people.escalate(people.fresh(time.time()), 3 if (n // escalate_every) % 3 == 0 else 2, "steady")
        else:
            people.background()
        if time.time() - last_report >= 5.0:
            last_report = time.time()
            progress(last_report - began)
    elapsed = time.time() - began
    return {"changes": n, "seconds": round(elapsed, 1), "rate": round(n / max(elapsed, 1e-9), 2),
            "worst_lag_s": round(lag, 3)}


# --- the measurements --------------------------------------------------------------------------


def reactions(sandbox: Any, escalations: list[tuple[int, float, int, str]]) -> dict[tuple[int, float], float | None]:
    """For each escalation, when Escalier's update put its ticket in the tier's group; None if never."""
    wanted = {ticket for ticket, *_ in escalations}
    by_ticket: dict[int, list[tuple[float, int | None]]] = {}
    for at, ticket, group, _ in list(sandbox.escalier_updates):
        if ticket in wanted:
            by_ticket.setdefault(ticket, []).append((at, group))
    out: dict[tuple[int, float], float | None] = {}
    for ticket, began, tier, _ in escalations:
        out[(ticket, began)] = next((at for at, group in by_ticket.get(ticket, ())
                                     if at >= began and group == TIER_GROUPS[tier]), None)
    return out


def wait_for(escalations: list[tuple[int, float, int, str]], sandbox: Any, timeout: float,
             people: People | None = None, rate: float = 0.0) -> None:
    """Until every escalation has its reaction, or ``timeout``; the people keep working meanwhile."""
    def done() -> bool:
        return all(v is not None for v in reactions(sandbox, escalations).values())
    if people is not None and rate > 0:
        drive(people, timeout, rate, escalate_every=None, progress=lambda _: None, done=done)
        return
    deadline = time.time() + timeout
    while time.time() < deadline and not done():
        time.sleep(0.2)


def settled(store: Store, sandbox: Any, timeout: float) -> bool:
    """Until no webhook, delivery or action waits, or ``timeout``; whether it got there."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        counts = store.counts()
        if not sandbox.backlog() and not counts["inbox_pending"] and not counts.get("outbox_pending"):
            return True
        time.sleep(0.2)
    return False


def breakdown(sandbox: Any, store: Store, escalations: list[tuple[int, float, int, str]],
              reacted: dict[tuple[int, float], float | None]) -> dict:
    """Where each reacted escalation's time went, stage by stage (seconds)."""
    stages: dict[str, list[float]] = {"webhook_queue": [], "webhook_post": [], "worker_decides": [],
                                      "upstream_write": []}
    for ticket, began, tier, _ in escalations:
        visible = reacted.get((ticket, began))
        if visible is None:
            continue
        posts = [p for p in sandbox.sent.get(ticket, ()) if p[0] >= began and p[2]]
        decided = store.decided(ticket, began, tier)
        if not posts or decided is None:
            continue
        start, end, _ = posts[0]
        stages["webhook_queue"].append(start - began)
        stages["webhook_post"].append(end - start)
        stages["worker_decides"].append(decided - end)
        stages["upstream_write"].append(visible - decided)
    return {name: spread(values) for name, values in stages.items()}


def per_minute(times: list[float], start: float, end: float) -> dict:
    """Events per minute on average in [start, end], and the most in any 60 s window."""
    inside = sorted(t for t in times if start <= t <= end)
    most = 0
    first = 0
    for last, moment in enumerate(inside):
        while inside[first] < moment - 60.0:
            first += 1
        most = max(most, last - first + 1)
    minutes = max((end - start) / 60.0, 1e-9)
    return {"average": round(len(inside) / minutes, 1), "most_in_60s": most}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Counts gained between two snapshots."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def phase_report(name: str, sandbox: Any, store: Store, people: People, start: float, end: float,
                 calls0: dict, throttled0: dict, keys0: dict, cpu0: tuple, cpu1: tuple) -> dict:
    """Everything measured about one phase."""
    escalations = [e for e in people.escalations if e[3] == name]
    reacted = reactions(sandbox, escalations)
    times = [v - began for (_, began), v in reacted.items() if v is not None]
    missed = sum(1 for v in reacted.values() if v is None)
    calls = delta(sandbox.calls(), calls0)
    keys = delta(sandbox.key_counts(), keys0)
    writes = calls.get(PUT, 0) + calls.get(BULK, 0)
    steps = len(times)
    by_tier = {}
    for tier in (2, 3):
        subset = [reacted[(t, b)] - b for t, b, tr, _ in escalations if tr == tier and reacted[(t, b)] is not None]
        by_tier[f"tier_{tier}"] = spread(subset)
    machine = cpu_share(cpu0[0], cpu1[0])
    processes = {k: round(cpu1[1][k] - cpu0[1].get(k, 0.0), 1) for k in cpu1[1]}
    return {
        "seconds": round(end - start, 1),
        "escalations": len(escalations),
        "reacted": steps,
        "missed": missed,
        "reaction_s": spread(times),
        "reaction_by_tier_s": by_tier,
        "calls": calls,
        "writes": writes,
        "writes_per_step": round(writes / steps, 2) if steps else None,
        "action_keys_written": len(keys),
        "updates_with_each_key": round(sum(keys.values()) / len(keys), 2) if keys else None,
        "throttled_429": delta(sandbox.throttled(), throttled0),
        "ticket_updates_per_minute": per_minute(sandbox.update_spent, start, end),
        "machine_cpu": machine,
        "process_cpu_s": processes,
    }


def burst_order(sandbox: Any, people: People) -> dict:
    """How the burst's updates landed: tier 3 (sent last) against tier 2 (sent first)."""
    escalations = [e for e in people.escalations if e[3] == "burst"]
    reacted = reactions(sandbox, escalations)
    landed = sorted((reacted[(ticket, began)], tier) for ticket, began, tier, _ in escalations
                    if reacted[(ticket, began)] is not None)
    threes = [at for at, tier in landed if tier == 3]
    twos = [at for at, tier in landed if tier == 2]
    ahead = sum(1 for a in threes for b in twos if a < b)
    first = [tier for _, tier in landed[:len(threes)]]
    # How each reaction went out: the update that put the ticket in its tier's group.
    how = {(u[1], u[0]): u[3] for u in sandbox.escalier_updates}
    landed_how = [how.get((ticket, reacted[(ticket, began)])) for ticket, began, _, _ in escalations]
    sent = min((e[1] for e in escalations), default=0.0)
    return {
        "tier_3_among_first_landed": f"{first.count(3)} of {len(first)}",
        "tier_3_before_tier_2_pairs_pct": round(100 * ahead / (len(threes) * len(twos)), 1)
        if threes and twos else None,
        "landed_by_bulk_job": landed_how.count("bulk"),
        "landed_by_single_update": landed_how.count("put"),
        "first_landed_s": round(landed[0][0] - sent, 3) if landed else None,
        "last_landed_s": round(landed[-1][0] - sent, 3) if landed else None,
    }


# --- the bench ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Seed, measure the steady phase, the burst and the recent reads; report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--rate", type=float, default=20.0, help="people's changes a second (default 20)")
    parser.add_argument("--escalating", type=float, default=1.0,
                        help="of which escalation steps a second (default 1)")
    parser.add_argument("--open", type=int, default=10_000, help="open escalations before measuring (default 10,000)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the steady phase (default 60)")
    parser.add_argument("--burst", type=int, default=300, help="escalations at once in the burst phase (default 300)")
    parser.add_argument("--recent", type=int, default=20,
                        help="escalations of tickets changed 2 s before (default 20; 0: skip)")
    parser.add_argument("--writes-per-minute", type=int, default=90,
                        help="the policy's write budget for Zendesk (default 90 of Zendesk's 100)")
    parser.add_argument("--account-limit", type=int, default=700,
                        help="the sandbox's account-wide API requests a minute (default 700, Zendesk's)")
    parser.add_argument("--webhook-mode", choices=("events", "trigger"), default="events")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds to wait for the last reactions of a phase (default 30)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and the server log")
    args = parser.parse_args(argv)
    if args.escalating <= 0 or args.escalating > args.rate:
        parser.error("--escalating must be above 0 and at most --rate")

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    folder = Path(tempfile.mkdtemp(prefix="escalier-e2e-"))
    db = folder / "escalier.db"
    running: dict[str, Serve] = {}
    sandbox = measured_sandbox(token=TOKEN, webhook_secret=SECRET, webhook_mode=args.webhook_mode)
    sandbox.account_rate_limit(args.account_limit)
    sandbox.ticket_update_limits(UPDATES_LIMIT, 30)
    sandbox.start()
    try:
        return run(args, sandbox, folder, db, running)
    except KeyboardInterrupt:
        say("interrupted: stopping")
        return 130
    finally:
        # A second Ctrl-C must not leave the server or the temporary files behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if "serve" in running:
            running["serve"].stop()
        sandbox.stop()
        if args.keep:
            say(f"kept {folder}")
        else:
            for leftover in sorted(folder.rglob("*"), reverse=True):
                leftover.unlink() if leftover.is_file() else leftover.rmdir()
            folder.rmdir()


def run(args: argparse.Namespace, sandbox: Any, folder: Path, db: Path, running: dict[str, Serve]) -> int:
    """The bench proper, with the sandbox started; ``escalier serve`` (in ``running``) is stopped by the caller."""
    result: dict[str, Any] = {
        "bench": "e2e", "rate": args.rate, "escalating": args.escalating, "open": args.open,
        "duration": args.duration, "burst": args.burst, "writes_per_minute": args.writes_per_minute,
        "account_limit_per_minute": args.account_limit, "webhook_mode": args.webhook_mode,
        "python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count(),
        "at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    with open("/proc/loadavg") if os.path.exists("/proc/loadavg") else contextlib.nullcontext() as load:
        result["load_average_at_start"] = load.read().split()[:3] if load else None

    # 1. open escalations
    say(f"creating {args.open:,} tickets in the Zendesk sandbox (webhooks off)")
    began = time.time()
    rng = random.Random(3)
    tickets = []
    for n in range(args.open):
        created = sandbox.create_ticket(
            f"Case {n}: the export is slow", tags=["bench"],
            custom_fields={SEVERITY: rng.choice(["severity_medium", "severity_low"]), USERS_AFFECTED: rng.randint(1, 20)},
        )
        tickets.append(created["id"])
    created_s = time.time() - began
    say(f"  {created_s:.1f} s")
    policy = folder / "escalier.yaml"
    policy.write_text(POLICY.format(url=sandbox.url, severity=SEVERITY, users=USERS_AFFECTED,
                                    writes_per_minute=args.writes_per_minute, reconcile_every="6h"))
    port = free_port()
    url = f"sqlite:///{db}"
    serve = running["serve"] = Serve(policy, url, port, folder / "serve.log")
    serve.wait_ready()
    store = Store(db)
    started = time.time()
    say(f"escalier serve on {serve.url} (pid {serve.process.pid}) after {started - began - created_s:.1f} s;"
        " the worker's start-up look opens the escalations")
    deadline = started + max(600.0, args.open / 10)
    while True:
        counts = store.counts()
        say(f"  {time.time() - started:6.1f}s  open {counts['open']:>6,}  outbox pending"
            f" {counts.get('outbox_pending', 0):>6,}  done {counts.get('outbox_done', 0):>6,}"
            f"  bulk jobs {sandbox.calls().get(BULK, 0):>4}  429s {sum(sandbox.throttled().values())}")
        if counts["open"] >= args.open and counts.get("outbox_pending", 0) == 0 and counts.get("outbox_done", 0) >= args.open:
            break
        if time.time() > deadline:
            raise SystemExit(f"the escalations did not open within {deadline - started:.0f} s: {counts}")
        time.sleep(2.0)
    opened_s = time.time() - started
    result["seeding"] = {"create_tickets_s": round(created_s, 1), "open_and_write_tier_1_s": round(opened_s, 1),
                         "calls": sandbox.calls(), "throttled_429": sandbox.throttled(),
                         "store": store.counts()}
    say(f"{args.open:,} escalations open and their tier-1 updates written in {opened_s:.1f} s")
    sandbox.configure_webhooks(url=f"{serve.url}/webhooks/zendesk")

    people = People(sandbox, tickets)
    escalate_every = max(1, round(args.rate / args.escalating))

    def progress(elapsed: float) -> None:
        counts = store.counts()
        reacted = reactions(sandbox, people.escalations)
        done = sum(1 for v in reacted.values() if v is not None)
        say(f"  {elapsed:6.1f}s  changes {people.changes:>6,}  escalations {done:>4}/{len(reacted):<4}"
            f"  webhook queue {sandbox.backlog():>5}  inbox pending {counts['inbox_pending']:>5}"
            f"  outbox pending {counts.get('outbox_pending', 0):>4}  429s {sum(sandbox.throttled().values())}")

    def snapshot() -> tuple:
        return sandbox.calls(), sandbox.throttled(), sandbox.key_counts(), (cpu_ticks(), process_cpu(serve.process.pid))

    # 2. steady
    say(f"steady: {args.rate:g} changes/s for {args.duration:g} s, every {escalate_every}th an escalation")
    calls0, throttled0, keys0, cpu0 = snapshot()
    start = time.time()
    result["steady_drive"] = drive(people, args.duration, args.rate, escalate_every=escalate_every,
                                   progress=progress)
    steady = [e for e in people.escalations if e[3] == "steady"]
    wait_for(steady, sandbox, args.settle, people, args.rate - args.escalating)
    end = time.time()
    cpu1 = (cpu_ticks(), process_cpu(serve.process.pid))
    result["steady"] = phase_report("steady", sandbox, store, people, start, end, calls0, throttled0, keys0, cpu0, cpu1)
    result["steady"]["reads_per_change"] = round(result["steady"]["calls"].get(GET, 0) / max(1, people.changes), 2)
    result["steady"]["requests_per_minute"] = round(
        sum(result["steady"]["calls"].values()) / ((end - start) / 60.0), 1)
    result["steady"]["where_the_time_goes_s"] = breakdown(sandbox, store, steady, reactions(sandbox, steady))
    steady_r = result["steady"]
    say(f"  reaction p50 {steady_r['reaction_s']['p50']} s, p99 {steady_r['reaction_s']['p99']} s,"
        f" max {steady_r['reaction_s']['max']} s; missed {steady_r['missed']}; 429s {steady_r['throttled_429']}")

    # 3. burst
    if args.burst:
        say(f"burst: {args.burst} escalations at once (tier 2 first, tier 3 last), people's changes going on")
        calls0, throttled0, keys0, cpu0 = snapshot()
        start = time.time()
        threes = args.burst // 3
        chosen = [people.fresh(start) for _ in range(args.burst)]
        for n, ticket in enumerate(chosen):
            people.escalate(ticket, 3 if n >= args.burst - threes else 2, "burst")
        say(f"  {args.burst} changes made in {time.time() - start:.2f} s")
        burst = [e for e in people.escalations if e[3] == "burst"]
        wait_for(burst, sandbox, max(args.settle, args.burst * 60.0 / args.writes_per_minute + 30), people,
                 args.rate - args.escalating)
        end = time.time()
        cpu1 = (cpu_ticks(), process_cpu(serve.process.pid))
        result["burst"] = phase_report("burst", sandbox, store, people, start, end, calls0, throttled0, keys0, cpu0, cpu1)
        result["burst"]["order"] = burst_order(sandbox, people)
        b = result["burst"]
        say(f"  reaction p50 {b['reaction_s']['p50']} s, p99 {b['reaction_s']['p99']} s; tier 3 first:"
            f" {b['order']['tier_3_among_first_landed']}; 429s {b['throttled_429']}")

    # 4. recently read tickets
    if args.recent:
        say(f"recent reads: {args.recent} escalations of tickets a person changed 2 s before")
        calls0, throttled0, keys0, cpu0 = snapshot()
        start = time.time()
        settled(store, sandbox, 60.0)  # what the burst left behind is decided first
        picked = [people.fresh(start) for _ in range(args.recent)]
        for ticket in picked:
            people._change(ticket, {"comment": "Adding the logs."})
        time.sleep(2.0)
        settled(store, sandbox, 30.0)  # the comments were decided: Escalier has read the tickets
        for ticket in picked:
            people.escalate(ticket, 2, "recent")
        recent = [e for e in people.escalations if e[3] == "recent"]
        wait_for(recent, sandbox, min(args.settle, 20.0))
        end = time.time()
        cpu1 = (cpu_ticks(), process_cpu(serve.process.pid))
        result["recent"] = phase_report("recent", sandbox, store, people, start, end, calls0, throttled0, keys0, cpu0, cpu1)
        say(f"  reacted {result['recent']['reacted']} of {result['recent']['escalations']}")

    result["duplicate_action_keys"] = sandbox.duplicate_keys()
    result["store_at_end"] = store.counts()
    result["dead_letters"] = store.query("SELECT count(*) FROM dead_letters")[0][0]
    result["people_changes_refused"] = people.refused
    report(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    target = RESULTS / f"e2e-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    print(f"Written to {target}" + (f" and {args.json}" if args.json else ""))
    if args.keep:
        say(f"server log: {folder / 'serve.log'}")
    return 0


def report(result: dict) -> None:
    """The figures as a table on stdout."""
    rows: list[tuple[str, str, str]] = []
    seeding = result["seeding"]
    rows.append(("open escalations", f"{result['open']:,}",
                 f"tickets {seeding['create_tickets_s']} s; opened and tier 1 written {seeding['open_and_write_tier_1_s']} s"))
    for phase in ("steady", "burst", "recent"):
        found = result.get(phase)
        if not found:
            continue
        reaction = found["reaction_s"]
        note = ""
        if phase == "steady":
            met = found["missed"] == 0 and reaction["p99"] is not None and reaction["p99"] < TARGET_P99
            note = "meets p99 < 2 s" if met else "MISSES p99 < 2 s"
        rows.append((f"{phase}: reaction p50/p99/max",
                     f"{reaction['p50']}/{reaction['p99']}/{reaction['max']} s", note))
        rows.append((f"{phase}: reacted", f"{found['reacted']} of {found['escalations']}",
                     f"missed {found['missed']}"))
        rows.append((f"{phase}: writes per step", str(found["writes_per_step"]),
                     f"calls {found['calls'].get(PUT, 0)} PUT, {found['calls'].get(BULK, 0)} bulk"))
        rows.append((f"{phase}: 429s", str(sum(found["throttled_429"].values())),
                     json.dumps(found["throttled_429"])))
        updates = found["ticket_updates_per_minute"]
        rows.append((f"{phase}: ticket updates/min", f"{updates['average']} avg",
                     f"most in 60 s {updates['most_in_60s']} (limit {UPDATES_LIMIT})"))
        machine = found["machine_cpu"]
        rows.append((f"{phase}: machine idle/steal", f"{machine.get('idle_pct')}%/{machine.get('steal_pct')}%",
                     json.dumps(found["process_cpu_s"])))
    steady = result.get("steady")
    if steady:
        rows.append(("steady: reads per change", str(steady["reads_per_change"]),
                     f"requests/min {steady['requests_per_minute']} (limit {result['account_limit_per_minute']})"))
        for stage, values in steady["where_the_time_goes_s"].items():
            rows.append((f"  {stage} p50/p99", f"{values['p50']}/{values['p99']} s", f"n={values['n']}"))
    if result.get("burst"):
        order = result["burst"]["order"]
        rows.append(("burst: tier 3 in first landed", order["tier_3_among_first_landed"],
                     f"tier 3 before tier 2 in {order['tier_3_before_tier_2_pairs_pct']}% of pairs"))
        rows.append(("burst: landed by", f"{order['landed_by_bulk_job']} bulk, {order['landed_by_single_update']} single",
                     f"first {order['first_landed_s']} s, last {order['last_landed_s']} s"))
    rows.append(("duplicate action keys", str(len(result["duplicate_action_keys"])), ""))
    rows.append(("dead letters", str(result["dead_letters"]), ""))
    for name, value, note in rows:
        print(f"{name:<34}{value:>22}  {note}")


if __name__ == "__main__":
    sys.exit(main())
