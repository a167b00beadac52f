"""The HTTP workers' front: each request is read whole by the event loop before a thread takes it.

Gunicorn's gthread worker hands a connection to a thread as soon as it is readable; the thread
then reads the request with blocking calls and no deadline. A client that sends its headers or
its body a byte a second holds that thread for as long as it likes, and about 34 such clients
held every thread of 2 workers x 16 threads: valid deliveries then waited 15 s at the median.

:class:`BufferingWorker` is gthread in which no thread ever waits on a client. A connection that
becomes readable goes to a thread, which takes only what has already arrived: a whole request
(the head, then a body framed by ``Content-Length`` or by chunks; almost always one ``recv``) is
served at once, from memory; anything less goes back to the worker's event loop, which reads the
rest as it comes, without a thread, and hands the connection to a thread again once the request
is whole. (Reading every request in the loop first cost 10-15% of the webhooks per second: the
loop is one thread, and it would then wait for the interpreter lock once more per request.) So:

- a request must arrive whole within ``request_deadline`` seconds (10 by default; Jira and
  Zendesk give up after about 10 s) of its connection being accepted, or of its first byte on a
  kept-alive connection; a slower client is answered 408 and disconnected (one that sent nothing
  is disconnected silently);
- a body longer than the receiver's limit is answered 413 as soon as its ``Content-Length`` or
  its chunks say so, before the rest is read (a chunked body used to be cut at the limit and then
  fail its signature check);
- what is held in memory is bounded per worker (``max_buffered_bytes``): past it, a request is
  answered 503 with ``Retry-After`` instead of being read;
- the errors gunicorn answers itself (414 request line too long, 431 too many or too large
  headers, 400 malformed request, 501 transfer coding) are JSON like every other error of the
  receiver, not HTML.

A TLS or HTTP/2 listener skips the front (the receiver serves plain HTTP/1.1 behind a proxy).
"""

from __future__ import annotations

import json
import logging
import re
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import ThreadWorker, TConn

__all__ = ["DEFAULT_REQUEST_DEADLINE", "BufferingWorker", "RequestFraming", "error_response"]

log = logging.getLogger("escalier.webhooks.front")

DEFAULT_REQUEST_DEADLINE = 10.0
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024
# A connection answered early (413) is read and discarded this long before it is closed, so the
# client, still sending, sees the answer instead of a reset.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 * 1024 * 1024
_READ_SIZE = 256 * 1024

_FRAMING_FIELD = re.compile(rb"\r\n(content-length|transfer-encoding|expect)[ \t]*:[ \t]*([^\r\n]*)", re.I)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_COMPRESSIONS = frozenset({b"compress", b"deflate", b"gzip"})

# The framing of a buffered request: more bytes are needed, or the head is one gunicorn's own
# parser must judge (it answers 400, 414, 431 or 501 from the bytes already buffered).
NEED_MORE = -1
HAND_OVER = -2


class BodyTooLarge(Exception):
    """The request's body is longer than the limit."""


class RequestFraming:
    """Where the first request of a buffer ends, worked out as its bytes arrive."""

    __slots__ = ("_chunk_at", "_decoded", "_head_end", "_length", "expects_continue", "head_limit",
                 "max_body")

    def __init__(self, *, max_body: int, head_limit: int) -> None:
        self.max_body = max_body
        self.head_limit = head_limit
        self.expects_continue = False
        self._head_end = -1
        self._length: int | None = None  # the whole request's length, once known
        self._chunk_at = -1  # where the next chunk's size line starts, for a chunked body
        self._decoded = 0

    @property
    def head_complete(self) -> bool:
        """True once the request line and headers are all buffered."""
        return self._head_end >= 0

    def feed(self, buf: bytes | bytearray) -> int:
        """The length of the first request in ``buf`` (its start), :data:`NEED_MORE` or :data:`HAND_OVER`.

        :raises BodyTooLarge: the body is, or is declared to be, longer than ``max_body``.
        """
        if self._head_end < 0:
            # Empty lines before a request line are allowed, and skipped (RFC 9112, 2.2).
            start = 0
            while buf.startswith(b"\r\n", start):
                start += 2
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                return HAND_OVER if len(buf) > self.head_limit else NEED_MORE
            self._head_end = end + 4
            framing = self._frame(bytes(buf[:end + 2]))
            if framing != NEED_MORE:
                return framing
        if self._length is not None:
            return self._length if len(buf) >= self._length else NEED_MORE
        return self._chunks(buf)

    def _frame(self, head: bytes) -> int:
        lengths, codings = [], []
        for name, value in _FRAMING_FIELD.findall(head):
            name = name.lower()
            if name == b"content-length":
                lengths.append(value.strip())
            elif name == b"transfer-encoding":
                codings.append(value.strip().lower())
            elif value.strip().lower() == b"100-continue":
                self.expects_continue = True
        if codings:
            # Chunked last, after any of the compressions gunicorn passes on: chunked framing.
            # Anything else (a length beside it, an unknown coding, chunked not last) gunicorn's
            # parser refuses from the head alone.
            listed = [c.strip() for value in codings for c in value.split(b",")]
            if lengths or listed[-1] != b"chunked" or not _COMPRESSIONS.issuperset(listed[:-1]):
                return HAND_OVER
            self._chunk_at = self._head_end
            return NEED_MORE
        if not lengths:
            self._length = self._head_end  # no body
            return NEED_MORE
        if len(lengths) > 1 or not _DIGITS.fullmatch(lengths[0]):
            return HAND_OVER
        declared = int(lengths[0])
        if declared > self.max_body:
            raise BodyTooLarge
        self._length = self._head_end + declared
        return NEED_MORE

    def _chunks(self, buf: bytes | bytearray) -> int:
        at = self._chunk_at
        while True:
            line_end = buf.find(b"\r\n", at)
            if line_end < 0:
                return HAND_OVER if len(buf) - at > 4096 else NEED_MORE
            size_text = bytes(buf[at:line_end]).split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                return HAND_OVER
            size = int(size_text, 16)
            if size == 0:
                # The last chunk, then optional trailer fields, then an empty line.
                if buf[line_end:line_end + 4] == b"\r\n\r\n":
                    return line_end + 4
                end = buf.find(b"\r\n\r\n", line_end + 2)
                if end < 0:
                    return HAND_OVER if len(buf) - line_end > self.head_limit else NEED_MORE
                return end + 4
            if self._decoded + size > self.max_body:
                raise BodyTooLarge
            following = line_end + 2 + size + 2
            if following > len(buf):
                return NEED_MORE
            self._decoded += size
            at = self._chunk_at = following


def error_response(status: int, reason: str, code: str, description: str,
                   headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 error response with the receiver's JSON error body; the connection closes."""
    body = json.dumps({"error": code, "reason": description}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "Connection: close", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Reading:
    """A request being read by the front."""

    __slots__ = ("buf", "continued", "deadline", "framing", "registered")

    def __init__(self, framing: RequestFraming, deadline: float, buf: bytes | bytearray = b"") -> None:
        self.framing = framing
        self.deadline = deadline
        self.buf = bytearray(buf)
        self.registered = False
        self.continued = False


class _Partial:
    """A thread's answer: the request is not all here; the event loop reads the rest."""

    __slots__ = ("buf",)

    def __init__(self, buf: bytes | bytearray) -> None:
        self.buf = buf


class _TooLarge:
    """A thread's answer: the body is over the limit; the event loop refuses it."""


# Errors gunicorn's parser raises, as the receiver answers them: status, reason, error code.
_PARSE_ERRORS: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (http_errors.InvalidResponseHeader, 500, "Internal Server Error", "internal_error"),
    (http_errors.InvalidResponseHeaderName, 500, "Internal Server Error", "internal_error"),
    (http_errors.ConfigurationProblem, 500, "Internal Server Error", "internal_error"),
    (http_errors.LimitRequestLine, 414, "URI Too Long", "uri_too_long"),
    (http_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large", "headers_too_large"),
    (http_errors.UnsupportedTransferCoding, 501, "Not Implemented", "unsupported_transfer_coding"),
    (http_errors.ExpectationFailed, 417, "Expectation Failed", "expectation_failed"),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden", "forbidden"),
    (http_errors.ParseException, 400, "Bad Request", "bad_request"),
)


_TOO_LARGE = (413, "Content Too Large", "body_too_large", "the body is larger than the limit")


def _parse_error(exc: BaseException) -> tuple[int, str, str]:
    for kind, status, reason, code in _PARSE_ERRORS:
        if isinstance(exc, kind):
            return status, reason, code
    return 500, "Internal Server Error", "internal_error"


class BufferingWorker(ThreadWorker):
    """Gunicorn's gthread worker with the front described in the module's docstring.

    Its limits come from the application's options (``GunicornServer.options``):
    ``escalier_request_deadline``, ``escalier_max_body_bytes`` and ``escalier_max_buffered_bytes``.
    """

    def init_process(self) -> None:
        """Read the front's limits, then start gunicorn's worker loop."""
        options = getattr(self.app, "options", None) or {}
        self.request_deadline = float(options.get("escalier_request_deadline") or DEFAULT_REQUEST_DEADLINE)
        self.max_body_bytes = int(options.get("escalier_max_body_bytes") or DEFAULT_MAX_BODY_BYTES)
        self.max_buffered_bytes = int(
            options.get("escalier_max_buffered_bytes") or DEFAULT_MAX_BUFFERED_BYTES
        )
        cfg = self.cfg
        self.front = not cfg.is_ssl and cfg.http2_cleartext in (None, "off")
        # Beyond this a head is one gunicorn's parser refuses (414 or 431) from what is buffered.
        self.head_limit = (cfg.limit_request_line or 8190) + (cfg.limit_request_fields or 32768) * (
            (cfg.limit_request_field_size or 8190) + 2
        ) + 4
        self.buffered = 0
        self._deadlines: deque[tuple[float, TConn, _Reading]] = deque()
        self._lingering: deque[tuple[float, socket.socket]] = deque()
        super().init_process()

    # -- requests in ----------------------------------------------------------------------
    #
    # A connection that becomes readable goes to a thread as in gthread, but the thread only
    # takes what has already arrived, without waiting: a whole request (the usual case, one
    # recv) is served at once; anything less goes back to the event loop, which reads the rest
    # as it comes and hands the connection to a thread again once the request is whole.

    def handle(self, conn: TConn) -> Any:
        """Serve a request that has arrived whole; give back to the loop one that has not."""
        if not self.front:
            return super().handle(conn)
        if getattr(conn, "whole", False):
            conn.whole = False  # read whole by the loop, already in the parser's buffer
        else:
            taken = self._take_arrived(conn)
            if taken is not None:
                return taken
        return super().handle(conn)

    def _take_arrived(self, conn: TConn) -> Any:
        """Read what ``conn`` has sent so far (its socket is non-blocking here); None once whole."""
        framing = RequestFraming(max_body=self.max_body_bytes, head_limit=self.head_limit)
        buf = b""
        while True:
            try:
                data = conn.sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return _Partial(buf)
            except OSError:
                return False
            if not data:
                return False  # closed by the client
            buf += data
            try:
                end = framing.feed(buf)
            except BodyTooLarge:
                return _TooLarge()
            if end != NEED_MORE:
                break
        if conn.parser is None:
            conn.init()
        conn.parser.unreader.unread(buf)
        conn.data_ready = True
        return None

    def finish_request(self, conn: TConn, fs: Any) -> None:
        """After a thread: a partial request goes to the loop, and so does a pipelined next one."""
        if self.front and not fs.cancelled() and fs.exception() is None:
            result = fs.result()
            if isinstance(result, _Partial):
                if self.alive:
                    self._begin(conn, time.monotonic() + self.request_deadline, result.buf)
                else:
                    self.nr_conns -= 1
                    conn.close()
                return
            if isinstance(result, _TooLarge):
                self._refuse(conn, None, *_TOO_LARGE)
                return
            if result is True and self.alive and conn.parser.unreader.buf.getvalue():
                # Read ahead with the last request: the next one, perhaps not all of it.
                ahead = conn.parser.unreader.take_buffered()
                self._begin(conn, time.monotonic() + self.request_deadline, ahead)
                return
        super().finish_request(conn, fs)

    def _begin(self, conn: TConn, deadline: float, buf: bytes | bytearray = b"") -> None:
        conn.sock.setblocking(False)
        reading = _Reading(RequestFraming(max_body=self.max_body_bytes, head_limit=self.head_limit),
                           deadline, buf)
        self.buffered += len(buf)
        conn.reading = reading
        self._deadlines.append((deadline, conn, reading))
        if buf and self._framed(conn, reading):
            return
        self._receive(conn, reading)

    def _receive(self, conn: TConn, reading: _Reading, _key: Any = None) -> None:
        try:
            data = conn.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            self._watch(conn, reading)
            return
        except OSError:
            self._close(conn, reading)
            return
        if not data:
            self._close(conn, reading)
            return
        reading.buf += data
        self.buffered += len(data)
        if self.buffered > self.max_buffered_bytes:
            log.warning("webhook.front.full", extra={"buffered_bytes": self.buffered})
            self._refuse(conn, reading, 503, "Service Unavailable", "busy",
                         "the receiver holds too many unfinished requests; retry later",
                         (("Retry-After", "5"),))
            return
        if not self._framed(conn, reading):
            self._watch(conn, reading)

    def _framed(self, conn: TConn, reading: _Reading) -> bool:
        """Hand the request to a thread, or refuse it, if its bytes say so; False to read on."""
        try:
            end = reading.framing.feed(reading.buf)
        except BodyTooLarge:
            self._refuse(conn, reading, *_TOO_LARGE)
            return True
        if end == NEED_MORE:
            if reading.framing.expects_continue and not reading.continued:
                # The client waits for this before it sends the body; gunicorn's own would come
                # only once the whole request is here.
                reading.continued = True
                self._send(conn.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
            return False
        self._hand_over(conn, reading)
        return True

    def _watch(self, conn: TConn, reading: _Reading) -> None:
        if not reading.registered:
            reading.registered = True
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._receive, conn, reading))

    def _unwatch(self, conn: TConn, reading: _Reading | None) -> None:
        if reading is None:
            return
        self.buffered -= len(reading.buf)
        conn.reading = None
        if reading.registered:
            reading.registered = False
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _hand_over(self, conn: TConn, reading: _Reading) -> None:
        self._unwatch(conn, reading)
        if conn.parser is None:
            conn.init()
        conn.parser.unreader.unread(bytes(reading.buf))
        conn.data_ready = True
        conn.whole = True
        self.enqueue_req(conn)

    # -- ending connections ----------------------------------------------------------------

    def _close(self, conn: TConn, reading: _Reading) -> None:
        self._unwatch(conn, reading)
        self.nr_conns -= 1
        conn.close()

    def _refuse(self, conn: TConn, reading: _Reading | None, status: int, reason: str, code: str,
                description: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._unwatch(conn, reading)
        self.nr_conns -= 1
        client = conn.sock
        self._send(client, error_response(status, reason, code, description, headers))
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            client.close()
            return
        # Read and drop what the client is still sending, so that it reads the answer.
        self._lingering.append((time.monotonic() + _LINGER_SECONDS, client))
        self.poller.register(client, selectors.EVENT_READ, partial(self._discard, client, [0]))

    def _discard(self, client: socket.socket, dropped: list[int], _key: Any = None) -> None:
        try:
            data = client.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        dropped[0] += len(data)
        if not data or dropped[0] > _LINGER_BYTES:
            self._unlinger(client)

    def _unlinger(self, client: socket.socket) -> None:
        try:
            self.poller.unregister(client)
        except (KeyError, ValueError, OSError):
            return  # already closed
        client.close()

    @staticmethod
    def _send(client: socket.socket, data: bytes) -> None:
        # Best effort: an error answer is small and the socket's send buffer empty.
        try:
            client.send(data)
        except OSError:
            pass

    def murder_pending(self) -> None:
        """Gunicorn's sweep of idle connections, plus requests past their deadline."""
        super().murder_pending()
        now = time.monotonic()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, conn, reading = deadlines.popleft()
            if getattr(conn, "reading", None) is not reading:
                continue  # finished in time
            if reading.buf:
                log.info("webhook.front.too_slow",
                         extra={"client": str(conn.client[0]) if conn.client else None,
                                "received_bytes": len(reading.buf)})
                self._unwatch(conn, reading)
                self.nr_conns -= 1
                self._send(conn.sock, error_response(
                    408, "Request Timeout", "request_timeout",
                    f"the request did not arrive whole within {self.request_deadline:g} s"))
                conn.close()
            else:
                self._close(conn, reading)
        while self._lingering and self._lingering[0][0] <= now:
            self._unlinger(self._lingering.popleft()[1])

    # -- gunicorn's own error answers ------------------------------------------------------

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """Answer what gunicorn's parser refused (or an unexpected error) with a JSON error."""
        status, reason, code = _parse_error(exc)
        if status < 500:
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
            description = str(exc)[:200] or reason
        else:
            self.log.exception("Error handling request")
            description = "an unexpected error occurred"
        try:
            client.setblocking(True)
            client.settimeout(1.0)
            client.sendall(error_response(status, reason, code, description))
        except OSError:
            self.log.debug("Failed to send error message.")
