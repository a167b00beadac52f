"""Where a buffered request ends, as the front works it out while bytes arrive."""

from __future__ import annotations

import json

import pytest

from escalier.webhooks._front import HAND_OVER, NEED_MORE, BodyTooLarge, RequestFraming, error_response

HEAD = b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\n"


def framing(max_body: int = 100) -> RequestFraming:
    return RequestFraming(max_body=max_body, head_limit=1000)


def fed_byte_by_byte(data: bytes, max_body: int = 100) -> list[int]:
    """What ``feed`` says after each byte, as a slow client would send them."""
    frame = framing(max_body)
    return [frame.feed(data[: n + 1]) for n in range(len(data))]


@pytest.mark.parametrize(
    "request_bytes",
    [
        HEAD + b"Content-Length: 5\r\n\r\nhello",
        HEAD + b"content-length:5\r\n\r\nhello",
        b"\r\n\r\n" + HEAD + b"Content-Length: 5\r\n\r\nhello",
        HEAD + b"\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n2;x=y\r\nhe\r\n3\r\nllo\r\n0\r\nT: 1\r\n\r\n",
    ],
    ids=["length", "lower-case", "leading-empty-lines", "no-body", "chunked", "chunked-ext-trailer"],
)
def test_a_request_is_whole_at_its_last_byte_and_not_before(request_bytes):
    said = fed_byte_by_byte(request_bytes)
    assert said[:-1] == [NEED_MORE] * (len(request_bytes) - 1)
    assert said[-1] == len(request_bytes)
    # A pipelined next request after it does not move its end.
    assert framing().feed(request_bytes + HEAD) == len(request_bytes)


@pytest.mark.parametrize(
    "request_bytes",
    [
        HEAD + b"Content-Length: 101\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n64\r\n" + b"x" * 100 + b"\r\n1\r\n",
    ],
    ids=["declared", "chunked"],
)
def test_a_body_over_the_limit_is_known_before_it_is_read(request_bytes):
    with pytest.raises(BodyTooLarge):
        framing().feed(request_bytes)


@pytest.mark.parametrize(
    "request_bytes",
    [
        HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
        HEAD + b"Content-Length: +5\r\n\r\n",
        HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        HEAD + b"Transfer-Encoding: foo\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\n",
        b"POST /" + b"a" * 1200,
    ],
    ids=["two-lengths", "signed-length", "length-and-chunked", "chunked-not-last", "unknown-coding",
         "bad-chunk-size", "head-too-long"],
)
def test_heads_gunicorn_must_judge_are_handed_over(request_bytes):
    assert framing().feed(request_bytes) == HAND_OVER


def test_expect_100_continue_is_noticed_once_the_head_is_whole():
    frame = framing()
    assert frame.feed(HEAD + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n") == NEED_MORE
    assert frame.head_complete and frame.expects_continue


def test_error_responses_are_whole_json_answers_that_close():
    raw = error_response(408, "Request Timeout", "request_timeout", "too slow", (("Retry-After", "5"),))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"Connection: close" in head and b"Retry-After: 5" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == {"error": "request_timeout", "reason": "too slow"}
