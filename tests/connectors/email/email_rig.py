"""Real mail servers on loopback for the mail connector's tests: dovecot, and mail to feed them.

:class:`Dovecot` starts ``/usr/sbin/dovecot -F`` as a child with a configuration of its own in a
temporary directory (plain IMAP on a free port of 127.0.0.1, no TLS, users in a ``passwd-file``
with plain passwords, Maildirs under the directory), and stops it. Where dovecot is missing, tests
that need it skip, except under CI (``CI`` set), where they fail: CI installs it.
"""

from __future__ import annotations

import contextlib

import imaplib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

DOVECOT = os.environ.get("ESCALIER_DOVECOT", "/usr/sbin/dovecot")
PASSWORD = "dovecot-password"


def free_port() -> int:
    """A port of 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def need_dovecot() -> None:
    """Skip where dovecot is not installed; under CI its absence is a failure."""
    if Path(DOVECOT).exists():
        return
    reason = f"dovecot is not installed ({DOVECOT} is missing; Debian: apt-get install dovecot-imapd)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI must run the IMAP tests against it")
    pytest.skip(reason)


def _mail_owner() -> tuple[int, int, str, str]:
    """The uid/gid mail is stored as, and the login and internal users dovecot runs as."""
    if os.getuid() != 0:
        name = pwd.getpwuid(os.getuid()).pw_name
        return os.getuid(), os.getgid(), name, name
    # As root, dovecot refuses uid 0 for mail: its own unprivileged users serve.
    for internal in ("dovecot", "nobody"):
        try:
            entry = pwd.getpwnam(internal)
        except KeyError:
            continue
        login = "dovenull" if _exists("dovenull") else internal
        return entry.pw_uid, entry.pw_gid, login, internal
    raise RuntimeError("no unprivileged user to run dovecot's processes as")


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


class Dovecot:
    """A dovecot IMAP server of our own on 127.0.0.1; ``users`` maps user names to passwords."""

    def __init__(self, users: Mapping[str, str]):
        # Not under pytest's tmp_path: that is private to its owner, and dovecot's unprivileged
        # processes must read the users file and write the Maildirs.
        self.root = Path(tempfile.mkdtemp(prefix="escalier-dovecot-"))
        self.root.chmod(0o755)
        self.users = dict(users)
        self.host = "127.0.0.1"
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def _config(self) -> Path:
        uid, gid, login, internal = _mail_owner()
        mail = self.root / "mail"
        for path in (self.root / "run", self.root / "state", mail):
            path.mkdir(parents=True, exist_ok=True)
        os.chown(mail, uid, gid)
        users = self.root / "users"
        users.write_text("".join(f"{name}:{{PLAIN}}{password}\n" for name, password in self.users.items()))
        conf = self.root / "dovecot.conf"
        conf.write_text(f"""\
base_dir = {self.root}/run
state_dir = {self.root}/state
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {self.root}/dovecot.log
mail_location = maildir:{mail}/%u
first_valid_uid = 1
first_valid_gid = 0
default_login_user = {login}
default_internal_user = {internal}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
""")
        return conf

    def start(self) -> Dovecot:
        """Start dovecot in the foreground as a child, and wait until it answers."""
        conf = self._config()
        self._process = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = (self._process.stderr.read() if self._process.stderr else b"").decode()
                raise RuntimeError(f"dovecot stopped at once: {error.strip()[:500]} {self.log()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not answer on port {self.port}: {self.log()[-500:]}")

    def stop(self) -> None:
        """Stop the child and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        """What dovecot logged."""
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @contextmanager
    def imap(self, user: str = "support") -> Iterator[imaplib.IMAP4]:
        """A logged-in imaplib client, for the tests' own looks into the mailbox."""
        client = imaplib.IMAP4(self.host, self.port, timeout=5)
        client.login(user, self.users[user])
        try:
            yield client
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                client.logout()

    def append(self, raw: bytes, *, user: str = "support", folder: str = "INBOX") -> None:
        """Deliver a message into a folder, as an MTA's local delivery would."""
        with self.imap(user) as client:
            typ, data = client.append(folder, None, None, raw)
            assert typ == "OK", data


def dovecot_available() -> bool:
    """True where the dovecot binary is installed."""
    return Path(DOVECOT).exists() and shutil.which(DOVECOT) is not None


def customer_mail(
    *,
    message_id: str,
    subject: str = "Cannot export invoices",
    sender: str = "Alice Customer <alice@customer.example>",
    to: str = "support@northwind.example",
    body: str = "Hello,\n\nthe invoice export fails with error 500 since this morning.\n",
    date: datetime | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A plain customer mail as bytes with CRLF line ends."""
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Message-ID: {message_id}",
        f"Date: {format_datetime(date) if date else 'Mon, 02 Mar 2026 09:00:00 +0000'}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        *[f"{name}: {value}" for name, value in (headers or {}).items()],
        "",
        *body.splitlines(),
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


class Mailboxes:
    """An IMAP server under test, the same way whichever it is: the mail sandbox or dovecot."""

    def __init__(self, name: str, host: str, port: int, passwords: Mapping[str, str],
                 deliver: Callable[[bytes, str], None]):
        self.name = name
        self.host = host
        self.port = port
        self.passwords = dict(passwords)
        self._deliver = deliver

    def deliver(self, raw: bytes, user: str = "support") -> None:
        """Put a message into ``user``'s INBOX."""
        self._deliver(raw, user)

    @contextmanager
    def imap(self, user: str = "support") -> Iterator[imaplib.IMAP4]:
        """A logged-in imaplib client for the test's own looks."""
        client = imaplib.IMAP4(self.host, self.port, timeout=5)
        client.login(user, self.passwords[user])
        try:
            yield client
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                client.logout()

    def messages(self, user: str = "support", folder: str = "INBOX") -> list[tuple[set[str], bytes]]:
        """Each message of a folder: its flags and its bytes, read over IMAP."""
        with self.imap(user) as client:
            typ, _ = client.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                return []
            typ, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
            found = []
            for item in data:
                if isinstance(item, tuple):
                    flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                    names = set(flags.group(1).decode().split()) if flags else set()
                    found.append((names, item[1]))
            return found


class KeywordlessProxy:
    """A TCP proxy in front of an IMAP server that says it keeps no keywords.

    It removes ``\\*`` and every keyword from ``PERMANENTFLAGS``, as servers without keyword
    support answer, and forwards everything else unchanged.
    """

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=10)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, rewrite: bool) -> None:
        source.settimeout(None)
        try:
            with contextlib.suppress(OSError):  # a side that closed ends the pipe
                while True:
                    data = source.recv(65536)
                    if not data:
                        break
                    if rewrite and b"PERMANENTFLAGS" in data:
                        data = re.sub(rb"\[PERMANENTFLAGS \(([^)]*)\)\]",
                                      lambda m: b"[PERMANENTFLAGS (" + b" ".join(
                                          f for f in m.group(1).split() if f.startswith(b"\\") and f != b"\\*"
                                      ) + b")]", data)
                    sink.sendall(data)
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting connections."""
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=2)
