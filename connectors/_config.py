"""Pieces of configuration every connector shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ConnectorSettings", "StrictModel", "check_person"]


class StrictModel(BaseModel):
    """A frozen model that refuses unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ConnectorSettings(StrictModel):
    """Settings every connection has: how fast it may write and how long it waits."""

    writes_per_minute: int = Field(
        default=60, ge=1, description="Escalier's share of the upstream write budget"
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    reconcile_every: str = Field(
        default="5m",
        pattern=r"^(off|(\d+[wdhms])+)$",
        description="how often to look upstream for changes no webhook delivered ('off' never)",
    )


def check_person(path: str, person: str | None, people: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A problem if ``person`` is set and is not one of ``people``."""
    if person is None or person in people:
        return []
    known = ", ".join(sorted(people)) or "none defined"
    return [(path, f"'{person}' is not a person defined under people (known: {known})")]
