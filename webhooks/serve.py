"""Running the receiver under gunicorn, programmatically; the Flask dev server is never used.

Settings for a 2-core host: 2 worker processes (one per core; each commits its own requests in
batches, and SQLite serialises the commits anyway) with 16 threads each (requests spend most of
their time waiting for the group commit, not on the CPU), a 30 s timeout, 5 s keep-alive for
senders that reuse connections. The workers are gthread workers with a front
(:class:`~escalier.webhooks._front.BufferingWorker`): each worker's event loop reads a request
whole, within a deadline (10 s by default), before a thread takes it, so a slow client holds
neither a thread nor a process, and the errors gunicorn answers itself are JSON.
Each worker listens on a socket of its own (``SO_REUSEPORT``) and the kernel spreads new
connections across them: on one shared socket, the worker that happened to be in ``accept``
took most of a burst of keep-alive connections (29 of 32 in four of five counted runs), and kept
them while the other worker idled.
The access log is built only when one is asked for (gunicorn would otherwise format every
request's log fields because a logging config is given, and then drop them). Each worker freezes
what it built at start-up out of the garbage collector's reach (:func:`freeze_startup_objects`).
Gunicorn's control socket (``gunicornc``) is off: by default every instance of a user would
share one path in ``$HOME/.gunicorn/``, and the receiver is managed by signals.
"""

from __future__ import annotations

import errno
import gc
import socket
from collections.abc import Callable
from typing import Any

import pluggy
from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.util import parse_address

from escalier.core.errors import EscalierError
from escalier.webhooks._front import DEFAULT_REQUEST_DEADLINE
from escalier.webhooks._logging import ReceiverLogger, logconfig
from escalier.webhooks.settings import ReceiverSettings

__all__ = ["GunicornServer", "check_free", "freeze_startup_objects", "gunicorn_options", "run_receiver"]


class GunicornServer(BaseApplication):
    """Gunicorn with options from a dict and the app from a factory, called in each worker."""

    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        """Copy our options into gunicorn's settings."""
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        """Build the app; without preload this runs after the fork, in each worker."""
        return self.factory()


def gunicorn_options(
    *,
    bind: str = "127.0.0.1:8080",
    workers: int = 2,
    threads: int = 16,
    timeout: int = 30,
    keepalive: int = 5,
    backlog: int = 2048,
    access_log: bool = False,
    log_level: str = "info",
    request_deadline: float = DEFAULT_REQUEST_DEADLINE,
    max_body_bytes: int = 1024 * 1024,
) -> dict[str, Any]:
    """The gunicorn settings the receiver runs with (gthread workers with a front, JSON logs).

    ``request_deadline`` is how long a client has to send a whole request; ``max_body_bytes``
    the longest body the front reads (longer ones are answered 413 before they are read).
    """
    return {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": "escalier.webhooks._front.BufferingWorker",
        # Read by the worker class, not by gunicorn (which skips names it does not know).
        "escalier_request_deadline": request_deadline,
        "escalier_max_body_bytes": max_body_bytes,
        "timeout": timeout,
        "graceful_timeout": timeout,
        "keepalive": keepalive,
        "backlog": backlog,
        # One listening socket per worker, balanced by the kernel (see the module's docstring);
        # not for a Unix socket, whose path each worker would take over from the one before.
        "reuse_port": _tcp(bind) is not None,
        # The app (engine, inbox connection) is built in each worker, never shared across a fork.
        "preload_app": False,
        "accesslog": "-" if access_log else None,
        "loglevel": log_level,
        "logconfig_dict": logconfig(log_level),
        "logger_class": ReceiverLogger,
        "proc_name": "escalier-receiver",
        "post_worker_init": freeze_startup_objects,
        "control_socket_disable": True,
    }


def _tcp(bind: str) -> tuple[str, int] | None:
    if bind.startswith(("unix:", "fd://")):
        return None
    address = parse_address(bind)
    return address if isinstance(address, tuple) else None


def check_free(bind: str) -> None:
    """Refuse a TCP address that something already listens on.

    With a socket per worker (``SO_REUSEPORT``), a second receiver started on the same port, by
    the same user, would not fail: it would silently get half of the connections.

    :raises EscalierError: the address is taken.
    """
    address = _tcp(bind)
    if address is None:
        return
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As gunicorn binds: connections of an earlier run left in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EscalierError(f"{bind} is already in use (is another receiver running?)") from exc
            raise EscalierError(f"cannot listen on {bind}: {exc.strerror}") from exc


def freeze_startup_objects(_worker: Any = None) -> None:
    """Gunicorn's ``post_worker_init``: keep what the app built at start-up out of garbage collection.

    The app, its routes, SQLAlchemy's metadata and every imported module live as long as the
    worker. Left in the collector's oldest generation, each full collection walks all of them:
    on a 2-core host that was a 58-95 ms pause of every request in the process, three times in
    ten seconds at 900 webhooks/s, and it set the receiver's p99. Frozen, a full collection walks
    only what requests left behind.
    """
    gc.collect()
    gc.freeze()


def run_receiver(
    settings: ReceiverSettings,
    *,
    bind: str = "127.0.0.1:8080",
    workers: int = 2,
    threads: int = 16,
    timeout: int = 30,
    keepalive: int = 5,
    access_log: bool = False,
    log_level: str = "info",
    request_deadline: float = DEFAULT_REQUEST_DEADLINE,
    plugin_manager: pluggy.PluginManager | None = None,
) -> None:
    """Serve the receiver for ``settings`` under gunicorn until it is stopped.

    :raises EscalierError: ``bind`` is taken, or cannot be listened on.
    """
    from escalier.webhooks.app import create_app

    check_free(bind)
    options = gunicorn_options(
        bind=bind,
        workers=workers,
        threads=threads,
        timeout=timeout,
        keepalive=keepalive,
        access_log=access_log,
        log_level=log_level,
        request_deadline=request_deadline,
        max_body_bytes=settings.max_body_bytes,
    )
    GunicornServer(lambda: create_app(settings, plugin_manager=plugin_manager), options).run()
