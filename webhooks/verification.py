"""What every webhook verifier shares: the rejection it raises and constant-time secret checks.

Connectors build their ``WebhookSpec.verify`` from these pieces; nothing here logs, and no
rejection carries a secret, a signature or a token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

__all__ = [
    "HMAC_ALGORITHMS",
    "Rejected",
    "check_base64_hmac",
    "check_hex_hmac",
    "check_token",
    "parse_iso_timestamp",
]

# WebSub names these methods; sha1 is left out on purpose: too weak to accept from the internet.
HMAC_ALGORITHMS: dict[str, Callable[[], object]] = {
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}


class Rejected(Exception):
    """A delivery the receiver refuses; ``code`` is stable, ``reason`` a sentence for people."""

    def __init__(self, code: str, reason: str, *, status: int = 401):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.status = status


def _any_matches(expected: Callable[[bytes], bytes], given: bytes, secrets: Sequence[str]) -> bool:
    # Every secret is tried, so the time taken does not tell which one (if any) matched.
    matched = False
    for secret in secrets:
        if hmac.compare_digest(expected(secret.encode("utf-8")), given):
            matched = True
    return matched


def check_hex_hmac(
    algorithm: str, signature_hex: str, message: bytes, secrets: Sequence[str]
) -> None:
    """Raise :class:`Rejected` unless ``signature_hex`` is the hex HMAC of ``message`` under a secret."""
    digest = HMAC_ALGORITHMS.get(algorithm.lower())
    if digest is None:
        raise Rejected("unsupported_algorithm", "the signature uses an algorithm we do not accept")
    try:
        given = bytes.fromhex(signature_hex.strip())
    except ValueError:
        raise Rejected("bad_signature", "the signature is not hexadecimal") from None
    if not _any_matches(lambda key: hmac.new(key, message, digest).digest(), given, secrets):
        raise Rejected("bad_signature", "the signature does not match the body")


def check_base64_hmac(signature_b64: str, message: bytes, secrets: Sequence[str]) -> None:
    """Raise :class:`Rejected` unless ``signature_b64`` is the base64 HMAC-SHA256 of ``message``."""
    try:
        given = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("bad_signature", "the signature is not base64") from None
    if not _any_matches(
        lambda key: hmac.new(key, message, hashlib.sha256).digest(), given, secrets
    ):
        raise Rejected("bad_signature", "the signature does not match the timestamp and body")


def check_token(token: str | None, secrets: Sequence[str]) -> None:
    """Raise :class:`Rejected` unless ``token`` equals one of ``secrets``."""
    if not token:
        raise Rejected("missing_token", "the request carries no token")
    given = token.encode("utf-8", "surrogateescape")
    if not _any_matches(lambda key: key, given, secrets):
        raise Rejected("bad_token", "the token is not valid for this endpoint")


def parse_iso_timestamp(text: str) -> datetime:
    """An ISO-8601 timestamp as an aware UTC datetime; ``Z`` and offsets both accepted."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise Rejected("bad_timestamp", "the signature timestamp is not an ISO-8601 time") from None
    if value.utcoffset() is None:
        raise Rejected("bad_timestamp", "the signature timestamp carries no time zone")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise Rejected("bad_timestamp", "the signature timestamp is out of range") from None
