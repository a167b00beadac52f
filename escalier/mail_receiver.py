"""``escalier mail-receiver POLICY``: take the mail an MTA pushes, over LMTP or SMTP, into the store.

The command runs one :class:`~escalier.connectors.email.inbound.LmtpReceiver` (or
:class:`~escalier.connectors.email.inbound.SmtpReceiver`) until SIGTERM or SIGINT. Each message is
committed to the inbox of the store ``escalier serve`` and ``escalier worker`` use (source
``email``, the Message-ID as its delivery id) before the MTA hears ``250``; the worker's inbox
pass then reads it as it reads mail fetched over IMAP. When the store cannot commit, the MTA hears
``451`` and keeps the message.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from escalier.core.errors import ConfigError

__all__ = ["add_command", "main", "parse_bind", "run_command"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_BIND = "127.0.0.1:2424"

_DESCRIPTION = """\
Receive the mail an MTA (Postfix, Exim...) delivers to the shared mailbox's address
over LMTP, or relays over SMTP, and store each message in Escalier's inbox before
answering 250: the worker then reads it as it reads mail fetched over IMAP. When the
store cannot commit the message, the MTA is answered 451 and tries again later, so
nothing is lost. The same message arriving both ways (pushed and read over IMAP) is
stored once: the inbox knows its Message-ID.

The store is the one `escalier serve` and `escalier worker` use (--db, else
$ESCALIER_DB, else escalier.db beside the policy), migrated to the newest schema
first. The policy must configure the mail connector (connectors.email), whose
connection the messages are stored for (--instance). Each stored message is logged
on standard error as a JSON line (event email.receiver.stored). Stops cleanly on
SIGTERM or Ctrl-C.

It speaks plain LMTP/SMTP without TLS or authentication: listen on loopback, or on
an address only the MTA can reach."""

_EPILOG = f"""\
examples:
  escalier mail-receiver escalier.yaml                        LMTP on {DEFAULT_BIND}
  escalier mail-receiver escalier.yaml --db postgresql+psycopg://escalier@db/escalier
  escalier mail-receiver escalier.yaml --protocol smtp --bind 127.0.0.1:2525

Postfix, delivering support@ to Escalier over LMTP:
  # main.cf: deliver support@ to Escalier over LMTP
  virtual_transport = lmtp:inet:127.0.0.1:2424

exit status: 0 stopped cleanly, 1 the store could not be opened or the address is
in use, 2 invalid arguments or policy (a --bind that is not HOST:PORT of this machine)."""


class UsageError(Exception):
    """An argument the command cannot use; the message names it."""


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register ``escalier mail-receiver`` on the ``escalier`` command's subparsers."""
    parser = commands.add_parser(
        "mail-receiver",
        help="store the mail an MTA pushes over LMTP or SMTP (for the mail connector)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("policy", metavar="POLICY", help="the policy file (YAML)")
    parser.add_argument(
        "--db", metavar="URL",
        help="the store: a SQLAlchemy URL such as sqlite:///escalier.db or "
        "postgresql+psycopg://user@host/db (default: $ESCALIER_DB, else escalier.db beside the policy)",
    )
    parser.add_argument(
        "--bind", default=DEFAULT_BIND, metavar="HOST:PORT",
        help=f"where to listen (default {DEFAULT_BIND}; [::1]:2424 for IPv6; port 0 picks a free one)",
    )
    parser.add_argument(
        "--protocol", choices=("lmtp", "smtp"), default="lmtp",
        help="LMTP (default: one answer per recipient, as Postfix's lmtp transport expects) or SMTP",
    )
    parser.add_argument(
        "--instance", default="default", metavar="NAME",
        help="the mail connection the messages are for (default: default; a name under "
        "connectors.email.instances)",
    )
    parser.set_defaults(handler=run_command)


def main(argv: Sequence[str] | None = None) -> int:
    """``escalier mail-receiver ARGS``, on its own; returns the exit status."""
    parser = argparse.ArgumentParser(prog="escalier")
    commands = parser.add_subparsers()
    add_command(commands)
    args = parser.parse_args(["mail-receiver", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a host and a port.

    :raises UsageError: it is not such an address.
    """
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--bind {text!r}: expected HOST:PORT, e.g. {DEFAULT_BIND}")
    if ":" in host and not text.startswith("["):
        raise UsageError(f"--bind {text!r}: write an IPv6 address in brackets, e.g. [::1]:2424")
    return host, int(port)


def run_command(args: argparse.Namespace) -> int:
    """The handler of ``escalier mail-receiver``."""
    try:
        host, port = parse_bind(args.bind)
        settings = _mail_settings(args.policy, args.instance)
    except UsageError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    # Before the store is touched: a wrong address is found without migrating anything.
    refused = _refused_address(host, port)
    if refused is not None:
        code, reason = refused
        _say(reason)
        return code
    url = args.db or os.environ.get("ESCALIER_DB") or _default_url(args.policy)
    return _serve(url, host, port, args.protocol, args.instance, settings)


def _refused_address(host: str, port: int) -> tuple[int, str] | None:
    """Why the receiver could not listen on ``host:port`` (exit status, sentence), or None."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return EXIT_USAGE, f"--bind {bind}: unknown host ({exc.strerror})"
    with socket.socket(family, kind, proto) as probe:
        # As asyncio binds: connections of an earlier run left in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return _bind_error(bind, exc)
    return None


def _bind_error(bind: str, exc: OSError) -> tuple[int, str]:
    if exc.errno == errno.EADDRINUSE:
        return EXIT_FAILED, f"--bind {bind} is already in use (is another receiver running?)"
    return EXIT_USAGE, f"--bind {bind}: cannot listen there ({os.strerror(exc.errno) if exc.errno else exc})"


def _mail_settings(policy_path: str, instance: str) -> Any:
    """The settings of the policy's mail connection ``instance``.

    :raises ConfigError: the policy is invalid.
    :raises UsageError: there is no such file, or no such mail connection in it.
    """
    from escalier.core.config import load_policy
    from escalier.plugins import get_plugin_manager
    from escalier.runtime.operations import configured_instances

    if not Path(policy_path).is_file():
        raise UsageError(f"{policy_path}: no such policy file")
    pm = get_plugin_manager()
    policy = load_policy(policy_path, plugin_manager=pm)
    found = {name: entry for (system, name), entry in configured_instances(policy, pm).items()
             if system == "email"}
    if instance not in found:
        if not found:
            raise UsageError(f"{policy_path}: configures no mail connector (connectors.email), "
                             "whose mail this would receive")
        raise UsageError(f"--instance {instance!r}: {policy_path} configures no such mail connection "
                         f"(it has: {', '.join(sorted(found))})")
    return found[instance].settings


def _default_url(policy_path: str) -> str:
    from escalier.store.database import default_url

    return default_url(policy_path)


def _serve(url: str, host: str, port: int, protocol: str, instance: str, settings: Any) -> int:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from escalier.connectors.email.inbound import MAX_MESSAGE_BYTES, LmtpReceiver, SmtpReceiver
    from escalier.core.errors import EscalierError
    from escalier.runtime.operations import upgrade
    from escalier.store import create_store_engine

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        _say(f"--db {url!r}: not a database URL (sqlite:///escalier.db, postgresql+psycopg://...)")
        return EXIT_USAGE
    try:
        revision = upgrade(url)
    except ArgumentError as exc:
        _say(f"--db {shown}: {exc}")
        return EXIT_USAGE
    except (SQLAlchemyError, EscalierError) as exc:
        _say(f"cannot open the store {shown}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return EXIT_FAILED
    _say(f"store {shown} at revision {revision}")
    _log_to_stderr()
    imap = getattr(settings, "imap", None)
    limit = imap.max_message_bytes if imap is not None else MAX_MESSAGE_BYTES
    kind = LmtpReceiver if protocol == "lmtp" else SmtpReceiver
    engine = create_store_engine(url)
    try:
        receiver = kind(store_engine=engine, instance=instance, host=host, port=port, data_size_limit=limit)
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            receiver.start()
        except OSError as exc:  # taken since it was probed
            code, reason = _bind_error(bind, exc)
            _say(reason)
            return code
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        where = f"[{host}]:{receiver.port}" if ":" in host else f"{host}:{receiver.port}"
        _say(f"receiving mail over {protocol.upper()} on {where} for email/{instance}")
        try:
            while not stop.wait(0.5):
                pass
        finally:
            receiver.stop()
        _say(f"mail receiver stopped; {receiver.stored} stored, {receiver.duplicates} already "
             f"stored, {receiver.deferred} deferred (451)")
        return EXIT_OK
    finally:
        engine.dispose()


def _log_to_stderr() -> None:
    """Escalier's log events as JSON lines on standard error (each stored message among them)."""
    from escalier.webhooks._logging import JsonFormatter

    logger = logging.getLogger("escalier")
    if any(getattr(h, "_escalier_mail_receiver", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._escalier_mail_receiver = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _say(line: str) -> None:
    print(f"escalier mail-receiver: {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
