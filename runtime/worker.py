"""The worker: turns stored deliveries and due timers into decisions, and decisions into upstream writes.

One pass (:meth:`Worker.run_once`) does three things:

1. claims inbox rows, parses each with the ``parse_event_for_connector`` hook and decides;
2. claims due timers and decides;
3. claims the ready outbox rows of a batch of tickets, most urgent ticket first, and hands each
   ticket's actions to its connector together (``apply_actions_for_connector``, so that one
   escalation step costs as few upstream calls as the API allows; one by one through
   ``apply_action_for_connector`` where a connector does not batch), under the retry policy of
   :mod:`escalier.runtime.retry` and within the upstream account's write budget
   (:mod:`escalier.runtime.ratelimit`): one call spends one token, whatever it carries.

When a batch fails part way, the actions that landed are marked done and never sent again; the
one that failed is retried (transient) or becomes a dead letter (refused), and the actions after a
transient failure wait with it. An action that an earlier attempt may have applied (a timeout, a
worker that died mid-call) is handed over as ``maybe_applied``: the connector looks before writing.

Besides webhooks, the deciding thread looks upstream for changes no webhook delivered
(``list_changes_for_connector``), per connection every ``reconcile_every`` and at start-up, and
decides what it finds through the same path: the events carry the ids a webhook would give them,
so the engine decides a change seen both ways once.

:meth:`Worker.run` does the same work in two threads: one decides (deliveries, then due timers),
the other applies the outbox, so that a breach is never decided late because upstream calls were
in the way. Each ticket's actions still go out in order (the outbox hands out a ticket's actions
only from its first pending one on). Only the applier thread writes upstream; the deciding thread
reads (a ticket a delivery does not carry, the changes of a reconciliation), so a connection is
used from both threads.
:meth:`Worker.run_once`, and ``run(once=True)``, stay in one thread for deterministic tests.

A notice whose channel's kind names a connector with a connection here (kind ``email`` and a mail
connection) is queued for that connection, whatever the ticket's system, with its key and ticket
id unchanged (:mod:`escalier.runtime.routing`); a ticket's claimed actions are then applied per
connection, each group in the engine's order.

A decision is committed in one transaction: the new state (optimistic ``version``), its audit rows,
its outbox rows and its next timer. Upstream writes happen only after that commit, from the outbox,
so a crash anywhere loses nothing; a connection checks a maybe-applied action upstream before
writing it, so an action re-applied after a crash has no second effect. Notifications fire after the commits.

Nothing is sent while an account's budget is empty. A pass waits for a token at most
``budget_wait`` seconds in all; the actions it could not afford go back to the outbox still
ready, so the next pass again serves the most urgent first. An account paused for longer than
that (a ``Retry-After``, an exhausted reported budget) has its pending actions held back with
``next_attempt_at`` at the moment its budget returns.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pluggy
from sqlalchemy import Engine

from escalier.core.connector import ActionBatch, ActionResult, Connection, DeliverySkipped, RawEvent
from escalier.core.engine import Decision
from escalier.core.errors import ConnectorError, PayloadError, PluginError, TransientError
from escalier.core.model import Action, EscalationState, TicketEvent, Timer
from escalier.core.policy import Policy
from escalier.plugins import notify_plugins
from escalier.runtime.ratelimit import RateLimiter
from escalier.runtime.retry import RetrySettings, build_retrying, requeue_delay
from escalier.runtime.routing import route_notices
from escalier.store import ClaimedAction, ClaimedBatch, ClaimedTimer, StaleStateError, Store, inbox

__all__ = ["Pass", "Worker", "default_worker_id", "system_clock"]

log = logging.getLogger("escalier.runtime.worker")

Decide = Callable[..., Decision]
Stimulus = TicketEvent | Timer

# A decision that loses the optimistic-lock race is decided again on fresh state; this many times
# means something keeps writing the same escalation, which deserves an error rather than a spin.
_MAX_CONFLICTS = 20

Account = tuple[str, str]

# While the deciding thread has work in hand, the applier thread waits before each action, but no
# longer than this: decisions go first without starving the outbox under a constant stream.
_DECISIONS_FIRST = 0.1
# While idle, the deciding thread looks this often for a stored delivery (one indexed read): the
# receiver is another process and cannot wake it.
_INBOX_POLL = 0.05
# How long the worker waits at its end for each listener thread to let go of its connection.
_LISTENER_JOIN = 5.0
# How long a connection's deliveries wait after a read failed without a Retry-After.
_READ_RETRY = 5.0


class _OverBudget(Exception):
    """The account has no write budget for longer than the pass may still wait."""

    def __init__(self, wait: float):
        super().__init__(f"no write budget for {wait:.3f}s")
        self.wait = wait


def system_clock() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def default_worker_id() -> str:
    """``host:pid``: unique among live processes, as lease take-back requires."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Pass:
    """What one pass of the worker handled."""

    deliveries: int = 0
    timers: int = 0
    actions: int = 0

    @property
    def total(self) -> int:
        """Everything handled in the pass."""
        return self.deliveries + self.timers + self.actions


class _Turns:
    """Decisions first: the applier thread lets a pass of the deciding thread finish before it acts.

    Both threads share one interpreter lock; an applier busy with HTTP would otherwise slow every
    database call of a decision, and take SQLite's single write lock between two decisions.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._deciding = False

    def deciding(self, busy: bool) -> None:
        """The deciding thread starts (True) or ends (False) a pass."""
        with self._changed:
            self._deciding = busy
            if not busy:
                self._changed.notify_all()

    def wait(self, timeout: float) -> None:
        """The applier's turn: when no pass is in hand, or after ``timeout`` seconds regardless."""
        with self._changed:
            self._changed.wait_for(lambda: not self._deciding, timeout)


class _Applier(threading.Thread):
    """The outbox's thread inside :meth:`Worker.run`: applies actions while the caller decides."""

    def __init__(self, worker: Worker, stop: threading.Event, idle_wait: float):
        super().__init__(name=f"escalier-outbox-{worker.worker_id}", daemon=True)
        self.worker = worker
        self.stop = stop
        self.idle_wait = idle_wait
        self.wake = threading.Event()
        self.finished = threading.Event()
        self.turns = _Turns()
        self.actions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.actions = self.worker._apply_until_stopped(
                self.stop, self.finished, self.wake, self.idle_wait
            )
        except BaseException as exc:  # raised again in the deciding thread; never a silent death
            log.error(
                "runtime.outbox.failed",
                exc_info=True,
                extra={"worker_id": self.worker.worker_id, "error": repr(exc)},
            )
            self.error = exc

    def finish(self) -> None:
        """Stop after the batch in hand, and wait for it."""
        self.finished.set()
        self.wake.set()
        self.join()


def _per_connection(batches: list[ClaimedBatch]) -> list[ClaimedBatch]:
    """Each ticket's batch split by the connection its actions go to (a notice routed to mail).

    The parts keep the engine's order, and the ticket's place in the urgency order.
    """
    split: list[ClaimedBatch] = []
    for batch in batches:
        first = (batch.system, batch.instance)
        if all((item.action.system, item.action.instance) == first for item in batch.items):
            split.append(batch)
            continue
        parts: dict[Account, list[ClaimedAction]] = {}
        for item in batch.items:
            parts.setdefault((item.action.system, item.action.instance), []).append(item)
        split.extend(ClaimedBatch(batch.escalation_id, tuple(items)) for items in parts.values())
    return split


class Worker:
    """Claims work from the store, decides with ``decide``, and applies actions upstream."""

    def __init__(
        self,
        store: Store,
        *,
        decide: Decide,
        policy: Policy | Callable[[], Policy],
        connections: Mapping[tuple[str, str], Connection],
        plugin_manager: pluggy.PluginManager,
        clock: Callable[[], datetime] = system_clock,
        sleep: Callable[[float], None] = time.sleep,
        retry: RetrySettings = RetrySettings(),
        worker_id: str | None = None,
        policies: Mapping[str, Policy] | None = None,
        extra_criteria: Mapping[str, Any] | None = None,
        batch_size: int = 50,
        lease: timedelta = timedelta(minutes=5),
        rate_limiter: RateLimiter | None = None,
        budget_wait: float = 2.0,
        settings: Mapping[tuple[str, str], Any] | None = None,
        reconcile: Mapping[tuple[str, str], timedelta] | None = None,
        sweep_at_least: int = 10,
        gather: float = 0.1,
    ):
        self.store = store
        self.decide = decide
        self._policy = policy
        self.connections = dict(connections)
        self.pm = plugin_manager
        self.clock = clock
        self.retry = retry
        self.worker_id = worker_id or default_worker_id()
        self.policies = dict(policies or {})
        self.extra_criteria = dict(extra_criteria or {})
        self.batch_size = batch_size
        self.lease = lease
        self.sleep = sleep
        self.budget_wait = budget_wait
        self._rate_limiter = rate_limiter
        # Each connection's validated settings (for the parser) and how often it is reconciled.
        self.settings = dict(settings or {})
        for connection in self.connections.values():
            attach = getattr(connection, "attach_store", None)
            if attach is not None:  # a connection that stores what it reads (mail) into the inbox
                attach(store.engine)
        self.reconcile = {account: every for account, every in (reconcile or {}).items()
                          if account in self.connections}
        self._reconcile_at: datetime | None = None  # None: look at once
        # This many tickets ready on one connection in one pass are offered to its sweep hook.
        self.sweep_at_least = sweep_at_least
        # An idle worker that finds a delivery waits this long for the ones arriving with it, so
        # that a pass reads their tickets in one request and decides them together.
        self.gather = gather
        self._retrying = build_retrying(retry, sleep=sleep)
        self._allowance = budget_wait
        self._held: dict[Account, datetime] = {}
        # Accounts whose reads answered 429 or 5xx, until when their deliveries wait unparsed.
        self._read_holds: dict[Account, datetime] = {}
        # Set while run() has an applier thread: told when a decision queues actions, and asked
        # for its turn before each action.
        self._outbox_wake: threading.Event | None = None
        self._turns: _Turns | None = None
        # Plugins hear from both of run()'s threads, one notification at a time.
        self._notify_lock = threading.Lock()
        # The channel kinds plugins registered, for routing notices; read on first use.
        self._channel_kinds: frozenset[str] | None = None

    @property
    def engine(self) -> Engine:
        """The store's database engine."""
        return self.store.engine

    def policy(self) -> Policy:
        """The current policy, from the provider when one was given."""
        return self._policy if isinstance(self._policy, Policy) else self._policy()

    @property
    def rate_limiter(self) -> RateLimiter:
        """The write budgets; by default the connectors' ``writes_per_minute``, on the worker's clock."""
        if self._rate_limiter is None:
            self._rate_limiter = RateLimiter.from_policy(
                self.policy(), self.pm, clock=lambda: self.clock().timestamp()
            )
        return self._rate_limiter

    # --- the loop -------------------------------------------------------------------------------

    def run_once(self) -> Pass:
        """One pass: deliveries, due timers, due reconciliations, then a batch of ready actions."""
        deliveries = self.process_inbox()
        timers = self.process_timers()
        deliveries += self.process_reconciliation()
        return Pass(deliveries, timers, self.process_outbox())

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        once: bool = False,
        idle_wait: float = 0.5,
    ) -> Pass:
        """Work until ``stop`` is set; with ``once``, pass after pass until one finds nothing to do.

        Without ``once`` the outbox has its own thread, so that no decision waits behind upstream
        calls: this thread decides (deliveries, then due timers) and the applier thread applies the
        committed actions. Idle, this thread sleeps until the next timer is due, at most
        ``idle_wait`` seconds (deliveries are looked for at least that often); the applier until
        an action is committed or its retry comes due, as long at most. Both stop when ``stop`` is
        set, each after the batch in hand. An exception in either thread stops both and is raised
        here, the applier's at most ``idle_wait`` seconds after it happened.
        """
        stop = stop or threading.Event()
        log.info("runtime.worker.started", extra={"worker_id": self.worker_id})
        done = self._run_passes(stop) if once else self._run_threads(stop, idle_wait)
        log.info(
            "runtime.worker.stopped",
            extra={"worker_id": self.worker_id, "deliveries": done.deliveries,
                   "timers": done.timers, "actions": done.actions},
        )
        return done

    def _run_passes(self, stop: threading.Event) -> Pass:
        deliveries = timers = actions = 0
        while not stop.is_set():
            done = self.run_once()
            deliveries, timers, actions = (
                deliveries + done.deliveries, timers + done.timers, actions + done.actions
            )
            if not done.total:
                break
        return Pass(deliveries, timers, actions)

    def _run_threads(self, stop: threading.Event, idle_wait: float) -> Pass:
        applier = _Applier(self, stop, idle_wait)
        self._outbox_wake, self._turns = applier.wake, applier.turns
        applier.start()
        halt = threading.Event()
        listeners = self._start_listeners(halt)
        deliveries = timers = 0
        try:
            while not stop.is_set() and applier.error is None:
                began = self.clock()
                applier.turns.deciding(True)
                try:
                    found = self.process_inbox()
                    claimed = self.process_timers()
                    found += self.process_reconciliation()
                    deliveries += found
                    timers += claimed
                finally:
                    applier.turns.deciding(False)
                if not (found or claimed):
                    self._idle(stop, self._until_next_timer(began, idle_wait))
        finally:
            halt.set()
            applier.finish()
            for listener in listeners:
                listener.join(timeout=_LISTENER_JOIN)
            self._outbox_wake = self._turns = None
        if applier.error is not None:
            raise applier.error
        return Pass(deliveries, timers, applier.actions)

    def _start_listeners(self, halt: threading.Event) -> list[threading.Thread]:
        """A thread for each connection that listens upstream (``listen(halt)``: mail in IMAP IDLE).

        A listener stores what it hears in the inbox, where the deciding thread's poll finds it;
        it runs until ``halt`` is set, and a failure of its own is logged, never the worker's.
        """
        threads = []
        for (system, instance), connection in self.connections.items():
            listen = getattr(connection, "listen", None)
            if listen is None:
                continue

            def run(listen: Callable[[threading.Event], None] = listen, system: str = system,
                    instance: str = instance) -> None:
                try:
                    listen(halt)
                except Exception as exc:  # the reconciliation's look still catches up
                    log.error("runtime.listener.failed", exc_info=True,
                              extra={"system": system, "instance": instance, "error": repr(exc)})

            thread = threading.Thread(target=run, name=f"escalier-listen-{system}-{instance}",
                                      daemon=True)
            thread.start()
            threads.append(thread)
        return threads

    def _idle(self, stop: threading.Event, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, or until a delivery is stored or ``stop`` is set."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or stop.wait(min(_INBOX_POLL, left)):
                return
            if inbox.has_claimable(self.engine, now=self.clock()):
                # Deliveries come in bursts (one update, several events): take them together.
                stop.wait(self.gather)
                return

    def _until_next_timer(self, after: datetime, idle_wait: float) -> float:
        """Seconds to the first timer due after ``after`` (the sweep's time), up to ``idle_wait``.

        A timer due before then that the sweep did not claim is leased to another worker, or
        outlived its escalation: it is looked at again in ``idle_wait``, as before.
        """
        due = self.store.next_timer_due(after=after)
        if due is None:
            return idle_wait
        return min(idle_wait, max(0.0, (due - self.clock()).total_seconds()))

    def _apply_until_stopped(self, stop: threading.Event, finished: threading.Event,
                             wake: threading.Event, idle_wait: float) -> int:
        """The applier thread's loop: batches of ready actions until stopped; returns how many."""
        actions = 0
        while not (stop.is_set() or finished.is_set()):
            wake.clear()  # before looking, so that actions committed meanwhile wake the wait below
            began = self.clock()
            handled = self.process_outbox()
            actions += handled
            if handled:
                continue
            wait = idle_wait
            later = self.store.next_action_ready(after=began)
            if later is not None:
                wait = min(idle_wait, max(0.0, (later - self.clock()).total_seconds()))
            wake.wait(wait)
        return actions

    # --- deliveries -----------------------------------------------------------------------------

    def process_inbox(self) -> int:
        """Claim, parse and decide a batch of stored deliveries; returns how many were claimed."""
        with self.store.writing():
            raws = inbox.claim(
                self.engine, self.worker_id, limit=self.batch_size, lease=self.lease,
                now=self.clock(),
            )
        self._prepare(raws)
        done: list[int] = []
        deferred: dict[Account, list[int]] = {}
        for raw in raws:
            assert raw.inbox_id is not None
            context = {"inbox_id": raw.inbox_id, "source": raw.source, "instance": raw.instance,
                       "delivery_id": raw.delivery_id, "event_type": raw.event_type}
            account = (raw.source, raw.instance)
            if self._read_hold_until(account) is not None:
                deferred.setdefault(account, []).append(raw.inbox_id)
                continue
            try:
                events = self.pm.hook.parse_event_for_connector(
                    raw=raw, config=self.settings.get(account), connection=self.connections.get(account)
                )
                if events is None:
                    log.warning("runtime.inbox.unparsed", extra=context)
                    with self.store.writing():
                        inbox.fail(self.engine, raw.inbox_id,
                                   f"no connector parses source {raw.source!r}", max_attempts=1,
                                   now=self.clock())
                    continue
                for event in events:
                    decision = self.handle(event)
                    log.info(
                        "runtime.event.decided",
                        extra={**context, "event_id": event.id, "ticket_id": event.ticket_id,
                               "kind": event.kind.value,
                               "actions": len(decision.actions) if decision is not None else 0},
                    )
            except DeliverySkipped as skipped:
                log.info("runtime.inbox.skipped", extra={**context, "class": skipped.kind,
                                                         "reason": skipped.reason})
                self.store.ignore_delivery(raw.inbox_id, f"{skipped.kind}: {skipped.reason}",
                                           now=self.clock())
                continue
            except TransientError as exc:  # the upstream asks to wait: so do its other deliveries
                self._hold_reads(account, exc, context)
                deferred.setdefault(account, []).append(raw.inbox_id)
                continue
            except PayloadError as exc:  # a shape no retry will make readable: to an operator
                log.error("runtime.inbox.unreadable", extra={**context, "error": str(exc)})
                with self.store.writing():
                    inbox.fail(self.engine, raw.inbox_id, f"unreadable: {exc}", max_attempts=1,
                               now=self.clock())
                continue
            except Exception as exc:  # a bad delivery goes back for a later try, then to an operator
                log.error("runtime.inbox.failed", exc_info=not isinstance(exc, ConnectorError),
                          extra={**context, "error": repr(exc)})
                with self.store.writing():
                    inbox.fail(self.engine, raw.inbox_id, repr(exc), now=self.clock())
                continue
            done.append(raw.inbox_id)
        with self.store.writing():
            inbox.complete(self.engine, done, now=self.clock())
            for account, ids in deferred.items():
                until = self._read_hold_until(account) or self.clock()
                inbox.defer(self.engine, ids, until,
                            f"{account[0]}/{account[1]} asked to wait until {until.isoformat()}")
        return len(raws)

    def _read_hold_until(self, account: Account) -> datetime | None:
        """Until when the account's deliveries wait for its upstream's reads; None: they don't."""
        until = self._read_holds.get(account)
        if until is not None and until <= self.clock():
            del self._read_holds[account]
            return None
        return until

    def _hold_reads(self, account: Account, exc: TransientError, context: Mapping[str, Any]) -> None:
        """A read for a delivery met a 429 or a 5xx: the account's deliveries wait, unparsed."""
        wait = exc.retry_after if exc.retry_after is not None else _READ_RETRY
        until = self.clock() + timedelta(seconds=max(wait, 0.1))
        self._read_holds[account] = max(until, self._read_holds.get(account, until))
        log.warning("runtime.inbox.held", extra={**context, "error": str(exc), "wait": wait})

    def _prepare(self, raws: Sequence[RawEvent]) -> None:
        """Let each connection read ahead, in few calls, what its deliveries' parses will need."""
        if not raws or not self.pm.hook.prepare_deliveries_for_connector.get_hookimpls():
            return
        by_account: dict[Account, list[RawEvent]] = {}
        for raw in raws:
            by_account.setdefault((raw.source, raw.instance), []).append(raw)
        for account, found in by_account.items():
            connection = self.connections.get(account)
            if connection is None:
                continue
            try:
                self.pm.hook.prepare_deliveries_for_connector(
                    raws=found, config=self.settings.get(account), connection=connection
                )
            except TransientError as exc:  # the parses would meet it too: they wait instead
                self._hold_reads(account, exc, {"source": account[0], "instance": account[1],
                                                "deliveries": len(found)})
            except Exception as exc:  # each parse then reads what it needs itself
                log.warning(
                    "runtime.inbox.prepare_failed",
                    exc_info=not isinstance(exc, ConnectorError),
                    extra={"source": account[0], "instance": account[1], "deliveries": len(found),
                           "error": repr(exc)},
                )

    # --- reconciliation ----------------------------------------------------------------------------

    def process_reconciliation(self) -> int:
        """Look upstream for missed changes on each connection that is due.

        :returns: the events decided, and the deliveries stored for the next inbox pass.
        """
        now = self.clock()
        if not self.reconcile or (self._reconcile_at is not None and now < self._reconcile_at):
            return 0  # nothing due: no write to the store on every pass
        decided = 0
        for due in self.store.claim_cursors(self.worker_id, list(self.reconcile), now=now,
                                            lease=self.lease):
            account = (due.system, due.instance)
            every = self.reconcile[account]
            context = {"system": due.system, "instance": due.instance}
            try:
                changes = self.pm.hook.list_changes_for_connector(
                    connection=self.connections[account], cursor=due.cursor, now=now
                )
            except ConnectorError as exc:
                # Looked for again soon; webhooks keep arriving meanwhile.
                log.warning("runtime.reconcile.failed", extra={**context, "error": str(exc)})
                self.store.save_cursor(*account, due.cursor, due_at=now + min(every, timedelta(minutes=1)),
                                       now=now, error=f"{type(exc).__name__}: {exc}")
                continue
            if changes is None:
                self.store.save_cursor(*account, due.cursor, due_at=now + every, now=now)
                continue
            for event in changes.events:
                self.handle(event)
            decided += len(changes.events) + changes.stored
            self.store.save_cursor(*account, changes.cursor, due_at=now if changes.more else now + every,
                                   now=now)
            log.info("runtime.reconcile.done", extra={**context, "events": len(changes.events),
                                                      "more": changes.more})
        # Another worker may hold one that is due; look again within a lease at the latest.
        following = self.store.next_cursor_due()
        self._reconcile_at = min(following, now + self.lease) if following is not None else now + self.lease
        return decided

    # --- timers ---------------------------------------------------------------------------------

    def process_timers(self) -> int:
        """Claim and decide a batch of due wake-ups; returns how many were claimed."""
        claimed = self.store.claim_timers(
            self.worker_id, now=self.clock(), limit=self.batch_size, lease=self.lease
        )
        for timer in claimed:
            self.handle(self._timer(timer))
        return len(claimed)

    @staticmethod
    def _timer(timer: ClaimedTimer) -> Timer:
        return Timer(
            system=timer.system, instance=timer.instance, ticket_id=timer.ticket_id, due_at=timer.due_at
        )

    # --- deciding -------------------------------------------------------------------------------

    def handle(self, stimulus: Stimulus) -> Decision | None:
        """Decide one event or timer and commit the result in one transaction; None if nothing to track."""
        system, instance, ticket_id = stimulus.system, stimulus.instance, stimulus.ticket_id
        for _ in range(_MAX_CONFLICTS):
            try:
                decision, escalation_id = self._decide_and_commit(system, instance, ticket_id, stimulus)
            except StaleStateError:
                log.info(
                    "runtime.decision.conflict",
                    extra={"system": system, "instance": instance, "ticket_id": ticket_id},
                )
                continue
            if decision is not None and decision.actions and self._outbox_wake is not None:
                self._outbox_wake.set()
            if decision is not None and decision.state is not None:
                self._announce(decision, escalation_id)
            return decision
        raise StaleStateError(f"escalation of {system}:{instance}:{ticket_id} kept changing")

    def _decide_and_commit(
        self, system: str, instance: str, ticket_id: str, stimulus: Stimulus
    ) -> tuple[Decision | None, int | None]:
        with self.store.begin() as tx:
            current = tx.load_escalation(system, instance, ticket_id)
            previous: EscalationState | None = current.state if current else None
            if previous is None and isinstance(stimulus, Timer):
                return None, None  # a timer outlived its escalation; nothing to wake
            decision = self.decide(
                self.policy(), previous, stimulus, self.clock(),
                extra_criteria=self.extra_criteria, policies=self.policies,
            )
            if decision.state is None:
                if current is not None:
                    tx.set_timer(current.id, None)
                return decision, None
            if current is not None and decision.state is previous and not decision.actions:
                if isinstance(stimulus, Timer):
                    tx.set_timer(current.id, decision.wake_at)
                return decision, current.id  # a duplicate delivery: nothing changed
            escalation_id = tx.save_escalation(current, decision.state, self.clock())
            tx.append_audit(escalation_id, decision.history)
            first_seq = decision.state.action_seq - len(decision.actions) + 1
            tx.enqueue_actions(escalation_id, self._routed(decision.actions, decision.state),
                               first_seq=first_seq, now=self.clock())
            tx.set_timer(escalation_id, decision.wake_at)
        return decision, escalation_id

    def _routed(self, actions: Sequence[Action], state: EscalationState) -> Sequence[Action]:
        """The actions as queued: each notice on the connection its channel's kind names."""
        if not actions:
            return actions
        if self._channel_kinds is None:
            self._channel_kinds = frozenset(
                spec.kind for specs in self.pm.hook.register_notification_channels() for spec in specs or ()
            )
        return route_notices(actions, policy=self.policy(), state=state, kinds=self._channel_kinds,
                             accounts=self.connections.keys(), now=self.clock())

    def _announce(self, decision: Decision, escalation_id: int | None) -> None:
        state = decision.state
        assert state is not None
        if decision.history or decision.actions:
            log.info(
                "runtime.escalation.decided",
                extra={"escalation_id": escalation_id, "ticket_id": state.ticket_id,
                       "tier": state.tier, "actions": len(decision.actions)},
            )
            if not self.pm.hook.escalation_decided.get_hookimpls():
                return
            history = [entry.model_dump(mode="json") for entry in decision.history]
            with self._notify_lock:
                notify_plugins(
                    self.pm,
                    "escalation_decided",
                    system=state.system,
                    ticket_id=state.ticket_id,
                    history=history,
                    actions=list(decision.actions),
                )

    # --- the outbox -----------------------------------------------------------------------------

    def process_outbox(self) -> int:
        """Claim and apply the ready actions of a batch of tickets, most urgent first, within budgets.

        :returns: how many actions were handled: applied, failed, or given back to wait briefly.
        """
        batches = _per_connection(self.store.claim_batches(
            self.worker_id, now=self.clock(), limit=self.batch_size, lease=self.lease
        ))
        self._allowance = self.budget_wait
        short: set[Account] = set()
        held: set[Account] = set()
        sweeps = self._sweeps(batches)
        handled = 0
        for batch in batches:
            account = (batch.system, batch.instance)
            if account in held:
                continue  # the hold gave it back already
            if account in sweeps:
                swept = sweeps[account]
                if not swept:
                    continue  # swept already, with the first of its batches
                sweeps[account] = []
                wait, settled = self.sweep(account, swept)
                handled += settled
                if wait is not None:
                    handled -= settled
                    held.add(account)
                    self._hold(account, wait)
                continue
            if self._turns is not None and account not in short:
                self._turns.wait(_DECISIONS_FIRST)
            if account in short:
                # Still ready: the next pass serves them, in urgency order, with a fresh allowance.
                handled += len(batch.items)
                self.store.release_actions(self.worker_id, [item.id for item in batch.items])
                continue
            wait, settled = self.apply(batch)
            handled += settled
            if wait is None:
                continue
            if wait <= self.budget_wait:
                short.add(account)
            else:
                handled -= settled
                held.add(account)
                self._hold(account, wait)
        return handled

    def _sweeps(self, batches: list[ClaimedBatch]) -> dict[Account, list[ClaimedBatch]]:
        """The accounts with enough ready tickets in this pass for a sweep, and their batches."""
        if not batches or not self.pm.hook.apply_sweep_for_connector.get_hookimpls():
            return {}
        by_account: dict[Account, list[ClaimedBatch]] = {}
        for batch in batches:
            by_account.setdefault((batch.system, batch.instance), []).append(batch)
        return {account: found for account, found in by_account.items()
                if len(found) >= self.sweep_at_least and account in self.connections}

    def sweep(self, account: Account, batches: list[ClaimedBatch]) -> tuple[float | None, int]:
        """Apply many tickets' actions in one call of the sweep hook; one by one where it declines.

        No retry within the pass: what did not land goes back to the outbox with its backoff and
        is looked up upstream before it is written again.

        :returns: as :meth:`apply`.
        """
        items = [item for batch in batches for item in batch.items]
        connection = self.connections[account]
        try:
            self._spend_budget(account)
        except _OverBudget as over:
            self.store.release_actions(self.worker_id, [item.id for item in items])
            return over.wait, len(items)
        offered = [
            ActionBatch(batch.system, batch.instance, batch.ticket_id,
                        tuple(item.action for item in batch.items),
                        frozenset(item.action.key for item in batch.items if item.maybe_applied),
                        self.store.ticket_of(batch.escalation_id))
            for batch in batches
        ]
        try:
            answered = self.pm.hook.apply_sweep_for_connector(batches=offered, connection=connection)
        except TransientError as exc:
            if exc.status == 429:
                self.rate_limiter.pause(*account, exc.retry_after)
            for item in items:
                self._requeue(item, 1, exc)
            return None, len(items)
        except (ConnectorError, PluginError) as exc:
            for item in items:
                self._dead(item, 1, f"{type(exc).__name__}: {exc}")
            return None, len(items)
        if answered is None:
            handled = 0
            for batch in batches:
                wait, settled = self.apply(batch)
                handled += settled
                if wait is not None:
                    return wait, handled
            return None, handled
        if [len(results) for results in answered] != [len(batch.items) for batch in batches]:
            raise PluginError(f"the {account[0]} connector's sweep answered the wrong number of results")
        every = [result for results in answered for result in results]
        for item, result in zip(items, every, strict=True):
            if result.error is None:
                self._done(item, 1, result)
            elif isinstance(result.error, TransientError):
                self._requeue(item, 1, result.error)
            else:
                self._dead(item, 1, f"{type(result.error).__name__}: {result.error}")
        self.rate_limiter.charge(*account, sum(r.calls for r in every) - 1)
        self.rate_limiter.observe(*account, next(
            (r.rate_limit for r in reversed(every) if r.rate_limit is not None), None))
        log.info("runtime.sweep.applied", extra={"system": account[0], "instance": account[1],
                                                 "tickets": len(batches), "actions": len(items)})
        return None, len(items)

    def apply(self, batch: ClaimedBatch) -> tuple[float | None, int]:
        """Apply one ticket's claimed actions under the retry policy; then done, later, or dead letters.

        :returns: None, or the seconds until the account has budget when actions went back to
            the outbox unsent because the pass could not wait that long; and how many actions were
            handled (applied, failed, or given back to wait for budget), not counting those a
            connector that does not batch left for the next pass.
        """
        account = (batch.system, batch.instance)
        connection = self.connections.get(account)
        if connection is None:
            for item in batch.items:
                self._dead(item, 0, f"no connection configured for {batch.system}/{batch.instance}")
            return None, len(batch.items)
        pending = list(batch.items)
        ticket = self.store.ticket_of(batch.escalation_id)
        # Keys an attempt may have written: an earlier pass's, or a failed call of this one.
        maybe = {item.action.key for item in pending if item.maybe_applied}
        attempts = 0
        failure: TransientError | None = None
        unsent: list[ClaimedAction] = []

        def attempt() -> None:
            nonlocal attempts, failure, pending
            self._spend_budget(account)
            attempts += 1
            actions = tuple(item.action for item in pending)
            try:
                results = self._apply_actions(
                    ActionBatch(batch.system, batch.instance, batch.ticket_id, actions,
                                frozenset(maybe & {a.key for a in actions}), ticket),
                    connection,
                )
            except TransientError as exc:
                if exc.status == 429:
                    # The budget is spent: nothing more to this account until it says so. A 503's
                    # Retry-After is about one outage, which the retry policy already honours.
                    self.rate_limiter.pause(*account, exc.retry_after)
                maybe.update(action.key for action in actions)
                failure = exc
                raise
            # A connector that does not batch applies the first action only: the rest go back
            # unsent, so that each of its calls spends its own write token.
            tried, rest = pending[: len(results)], pending[len(results):]
            left: list[ClaimedAction] = []
            transient: TransientError | None = None
            for item, result in zip(tried, results, strict=True):
                error = result.error
                if error is None:
                    self._done(item, attempts, result)
                elif isinstance(error, TransientError):
                    left.append(item)
                    transient = transient or error
                else:
                    # Refused, not found, bad credentials: retrying cannot help, an operator can.
                    self._dead(item, attempts, f"{type(error).__name__}: {error}")
            # The call took a token; writes beyond the first that the connector reports take theirs.
            self.rate_limiter.charge(*account, sum(r.calls for r in results) - 1)
            self.rate_limiter.observe(*account, next(
                (r.rate_limit for r in reversed(results) if r.rate_limit is not None), None))
            if transient is not None:
                maybe.update(item.action.key for item in left)
                pending = left + rest
                failure = transient
                raise transient
            pending, unsent[:] = [], rest

        try:
            self._retrying(attempt)
        except _OverBudget as over:
            if failure is not None:
                # It failed in this pass already: it waits out its backoff like any failure.
                for item in pending:
                    self._requeue(item, attempts, failure)
                return None, len(batch.items)
            log.info(
                "runtime.action.over_budget",
                extra={"system": batch.system, "instance": batch.instance,
                       "ticket_id": batch.ticket_id, "actions": len(pending),
                       "wait_seconds": round(over.wait, 3)},
            )
            self.store.release_actions(self.worker_id, [item.id for item in pending])
            return over.wait, len(batch.items)
        except TransientError as exc:
            for item in pending:
                self._requeue(item, attempts, exc)
            return None, len(batch.items)
        except (ConnectorError, PluginError) as exc:
            # Refused, not found, bad credentials, no plugin: retrying cannot help, an operator can.
            for item in pending:
                self._dead(item, attempts, f"{type(exc).__name__}: {exc}")
            return None, len(batch.items)
        self.store.release_actions(self.worker_id, [item.id for item in unsent])
        return None, len(batch.items) - len(unsent)

    def _apply_actions(self, batch: ActionBatch, connection: Connection) -> list[ActionResult]:
        """The batch hook's results; where no plugin batches, the first action's alone.

        The single-action hook's failure is raised: nothing of the batch landed.
        """
        results = self.pm.hook.apply_actions_for_connector(batch=batch, connection=connection)
        if results is not None:
            if len(results) != len(batch.actions):
                raise PluginError(
                    f"the {batch.system} connector answered {len(results)} results for "
                    f"{len(batch.actions)} actions"
                )
            return list(results)
        action = batch.actions[0]
        result = self.pm.hook.apply_action_for_connector(action=action, connection=connection)
        if result is None:
            raise PluginError(f"no plugin applies {action.kind.value} actions to {action.system}")
        return [result]

    def _done(self, item: ClaimedAction, attempts: int, result: ActionResult) -> None:
        action = item.action
        self.store.mark_done(self.worker_id, [item.id], now=self.clock(), attempts=attempts)
        log.info(
            "runtime.action.applied",
            extra={"outbox_id": item.id, "key": action.key, "kind": action.kind.value,
                   "system": action.system, "instance": action.instance,
                   "ticket_id": action.ticket_id, "applied": result.applied,
                   "attempts": item.attempts + attempts},
        )
        with self._notify_lock:
            notify_plugins(self.pm, "action_applied", action=action, result=result)

    def _requeue(self, item: ClaimedAction, attempts: int, exc: TransientError) -> None:
        """Back to the outbox after a transient failure, or a dead letter after too many."""
        total = item.attempts + attempts
        if total >= self.retry.max_total_attempts:
            self._dead(item, attempts, f"gave up after {total} attempts: {exc}")
            return
        passes = max(1, total // max(1, self.retry.attempts_per_pass))
        at = self.clock() + requeue_delay(self.retry, passes, exc.retry_after)
        log.warning(
            "runtime.action.requeued",
            extra={"outbox_id": item.id, "key": item.action.key, "ticket_id": item.action.ticket_id,
                   "attempts": total,
                   "next_attempt_at": at.isoformat(), "error": str(exc)},
        )
        self.store.retry_later(self.worker_id, item.id, attempts=attempts, at=at, error=str(exc))

    def _spend_budget(self, account: Account) -> None:
        """Take a write token, sleeping for it within what is left of the pass's allowance."""
        while True:
            wait = self.rate_limiter.acquire(*account)
            if wait == 0.0:
                return
            if wait > self._allowance:
                raise _OverBudget(wait)
            self._allowance -= wait
            self.sleep(wait)

    def _hold(self, account: Account, wait: float) -> int:
        """Hold the account's pending actions until its budget returns; returns how many."""
        now = self.clock()
        at = now + timedelta(seconds=wait)
        previous = self._held.get(account)
        # The same pause seen again must give the same moment, or a later and less urgent action
        # could become ready a microsecond before the ones held first.
        if previous is not None and previous > now and at - previous < timedelta(milliseconds=1):
            at = previous
        self._held[account] = at
        count = self.store.hold_actions(self.worker_id, *account, until=at, now=now)
        log.warning(
            "runtime.account.paused",
            extra={"system": account[0], "instance": account[1], "until": at.isoformat(),
                   "held": count},
        )
        return count

    def _dead(self, item: ClaimedAction, attempts: int, error: str) -> None:
        log.error(
            "runtime.action.dead_lettered",
            extra={"outbox_id": item.id, "key": item.action.key, "system": item.action.system,
                   "instance": item.action.instance, "ticket_id": item.action.ticket_id,
                   "error": error},
        )
        self.store.dead_letter(self.worker_id, item.id, attempts=attempts, now=self.clock(), error=error)

