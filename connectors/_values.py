"""Small readers every connector needs for what upstreams send: counts, delays, validation errors."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from pydantic import ValidationError

from escalier.core.errors import PayloadError

__all__ = ["first_error", "json_object", "seconds_until", "whole_count"]


def whole_count(value: Any) -> int | None:
    """A non-negative whole count from a number or numeric string, else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def seconds_until(value: str | None) -> float | None:
    """A header's delay: a number of seconds, or a date (ISO 8601 or HTTP) from now; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    if when.utcoffset() is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def first_error(exc: ValidationError) -> str:
    """The first problem pydantic found, as ``where: what``."""
    errors = exc.errors()
    if not errors:
        return "invalid value"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "value"
    return f"{where}: {first.get('msg', 'invalid value')}"


def json_object(body: bytes, what: str) -> Mapping[str, Any]:
    """A webhook body as a JSON object; anything else is a :class:`PayloadError` saying why.

    ``what`` names the delivery in the message (``a Jira webhook``). NaN and Infinity are not
    JSON, and a body nested past the parser's depth is refused rather than crashing it.
    """
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise PayloadError(f"the body nests too deeply to be {what}") from exc
    except ValueError as exc:
        raise PayloadError("the body is not JSON") from exc
    if not isinstance(payload, dict):
        raise PayloadError("the body is JSON but not an object")
    return payload


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
