"""The policy file: tiers, criteria, the decision matrix, paths, RACI, SLAs, calendars.

These models describe the YAML file an admin owns (``escalier.yaml``). They validate types and
shapes; :mod:`escalier.core.config` adds what needs the whole file (cross-references, connector
sections) and locates every problem by file, line and path. The JSON Schema of the file is
:func:`policy_json_schema`.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from escalier.core.durations import DURATION_PATTERN, format_duration, parse_duration
from escalier.core.model import PathKind, StatusCategory

if TYPE_CHECKING:
    from escalier.core.calendar import BusinessCalendar

__all__ = [
    "CalendarSpec",
    "ChannelConfig",
    "Conditions",
    "Criterion",
    "Customers",
    "Deescalation",
    "DeescalationRule",
    "Department",
    "Duration",
    "FollowUp",
    "ImpactLevel",
    "ManagementLevel",
    "MatrixCell",
    "Move",
    "Notifications",
    "Paths",
    "Person",
    "Policy",
    "RaciSpec",
    "RequiredItem",
    "SecretRef",
    "SlaPolicy",
    "SlaTargets",
    "TemplateSpec",
    "TierNotify",
    "TierSpec",
    "Timebox",
    "policy_json_schema",
]

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": DURATION_PATTERN, "examples": ["20m", "2h", "1h30m", "3d"]}
    ),
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=_NAME, examples=["tier-2", "engineering"])]
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SecretRef(_Strict):
    """A secret named by its environment variable; the value never sits in the file or a log."""

    env: Annotated[str, Field(alias="$env", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "description": "write '${VARIABLE}' or {'$env': 'VARIABLE'}; never the secret itself"
        },
    )

    @model_validator(mode="before")
    @classmethod
    def _from_reference(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _ENV_REF.match(value.strip())
            if not match:
                raise ValueError(
                    "secrets are read from the environment: write '${VARIABLE}' "
                    "instead of the secret itself"
                )
            return {"$env": match.group(1)}
        return value

    def reveal(self, environ: dict[str, str] | Any) -> str:
        """The secret's value from ``environ``; KeyError names the variable if it is unset."""
        return environ[self.env]

    def __repr__(self) -> str:
        return f"SecretRef(${{{self.env}}})"

    __str__ = __repr__


class Person(_Strict):
    """Someone who can be Responsible, Accountable, Consulted or Informed, in each system."""

    name: str
    email: str | None = None
    jira: str | None = Field(default=None, description="accountId on Cloud, username on Data Center")
    zendesk: int | None = Field(default=None, description="Zendesk user id")
    role: str | None = None


class CalendarSpec(_Strict):
    """Business hours in one time zone, with public holidays and explicit dates."""

    timezone: str = Field(examples=["Europe/Berlin", "America/New_York"])
    hours: dict[str, str | list[str]] | Literal["24x7"] = Field(
        description="day or day range -> 'HH:MM-HH:MM' or a list of them; or '24x7'",
        examples=[{"mon-fri": "09:00-17:00"}, {"mon-fri": ["08:00-12:00", "13:00-17:00"]}],
    )
    holidays: str | None = Field(
        default=None,
        description="country code for public holidays, optionally with a subdivision: 'DE', 'DE-BE', 'US-NY'",
    )
    extra_holidays: list[date] = Field(default_factory=list)
    extra_workdays: list[date] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{value}' is not an IANA time zone, e.g. 'Europe/Berlin'") from None
        return value

    @field_validator("hours")
    @classmethod
    def _valid_hours(cls, value: Any) -> Any:
        if value != "24x7":
            from escalier.core.calendar import parse_hours

            parse_hours(value)
        return value

    @field_validator("holidays")
    @classmethod
    def _known_country(cls, value: str | None) -> str | None:
        if value is None:
            return value
        import holidays

        country, _, subdiv = value.partition("-")
        try:
            holidays.country_holidays(country, subdiv=subdiv or None, years=2000)
        except NotImplementedError:
            raise ValueError(f"'{country}' is not a country the holidays package knows") from None
        except Exception as exc:  # the package names the valid subdivisions itself
            raise ValueError(f"'{value}': {exc}") from None
        return value

    def build(self, name: str) -> BusinessCalendar:
        """The :class:`BusinessCalendar` this spec describes."""
        from escalier.core.calendar import BusinessCalendar, parse_hours

        if self.hours == "24x7":
            hours = parse_hours({"mon-sun": "00:00-24:00"})
        else:
            hours = parse_hours(self.hours)
        country, _, subdiv = (self.holidays or "").partition("-")
        return BusinessCalendar.build(
            name=name,
            timezone=self.timezone,
            hours=hours,
            holiday_country=country or None,
            holiday_subdiv=subdiv or None,
            extra_holidays=self.extra_holidays,
            extra_workdays=self.extra_workdays,
        )


class SlaTargets(_Strict):
    """How long, in business time, until acknowledgement and resolution."""

    acknowledge: Duration | None = None
    resolve: Duration | None = None


class Timebox(_Strict):
    """Research time owed at a tier before a move ("the 20-minute rule").

    ``gate``: a move out of the tier before the time-box ends is refused (except by a criterion
    marked ``bypass_timebox``); ``force``: when it ends with the ticket unresolved, escalate.
    """

    duration: Duration
    mode: Literal["gate", "force", "both"] = "gate"


class RequiredItem(_Strict):
    """One piece of information a ticket must carry before it may enter a tier.

    It is present when the custom field ``field`` is non-empty, or the tag ``tag`` is set, or
    any of ``keywords`` appears in the description or a comment.
    """

    id: Name
    label: str
    field: str | None = None
    tag: str | None = None
    keywords: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_a_test(self) -> RequiredItem:
        if not (self.field or self.tag or self.keywords):
            raise ValueError("say how to tell it is present: give field, tag or keywords")
        return self


class RaciSpec(_Strict):
    """Who is Responsible, Accountable, Consulted and Informed at a tier.

    Entries name people from ``people``; ``responsible`` may also say ``target`` (the tier's
    assignee or group in the ticket's system); ``informed`` may name a channel as ``channel:NAME``.
    """

    responsible: list[str] = Field(default_factory=lambda: ["target"])
    accountable: list[str] = Field(default_factory=list)
    consulted: list[str] = Field(default_factory=list)
    informed: list[str] = Field(default_factory=list)


class TierNotify(_Strict):
    """How a tier is notified until somebody acknowledges, in business time of its calendar."""

    channels: list[str] = Field(default_factory=list)
    repeat_every: Duration | None = Field(
        default=None,
        description=(
            "business time of the tier's calendar between repeats; defaults to "
            "notifications.repeat_every"
        ),
    )
    max_repeats: int | None = Field(
        default=None,
        ge=0,
        description="repeats at one level before the next; defaults to notifications.max_repeats",
    )


class TierSpec(_Strict):
    """One tier of support and where it lives in each system."""

    level: int = Field(ge=1, le=9)
    name: str
    description: str = ""
    calendar: str | None = None
    targets: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="connector name -> that connector's target, e.g. {'zendesk': {'group': 'tier-2'}}",
    )
    sla: SlaTargets = SlaTargets()
    timebox: Timebox | None = None
    required_information: list[RequiredItem] = Field(default_factory=list)
    missing_information_template: str = "missing-information"
    raci: RaciSpec = RaciSpec()
    notify: TierNotify = TierNotify()
    tags: list[str] = Field(default_factory=list, description="tags set on entering the tier")


class ImpactLevel(_Strict):
    """A named band of impact, by the number of users affected."""

    name: Name
    users_at_least: int = Field(ge=0)


class MatrixCell(_Strict):
    """What a severity and impact call for: a tier, a priority, SLA targets."""

    tier: int = Field(ge=1)
    priority: str | None = None
    sla: SlaTargets = SlaTargets()


class Customers(_Strict):
    """How customer value is judged."""

    vip_organizations: list[str] = Field(default_factory=list)
    vip_tags: list[str] = Field(default_factory=list)
    value_field: str | None = Field(default=None, description="custom field with the account's value")
    vip_value_at_least: float | None = None


class Conditions(_Strict):
    """Conditions that must all hold for a criterion to match."""

    unresolved_for: Duration | None = Field(default=None, description="business time since created")
    at_tier_for: Duration | None = Field(default=None, description="business time at the current tier")
    tier: list[int] = Field(default_factory=list)
    severity: list[str] = Field(default_factory=list)
    priority: list[str] = Field(default_factory=list)
    users_affected_at_least: int | None = Field(default=None, ge=0)
    vip: bool | None = None
    organizations: list[str] = Field(default_factory=list)
    tags_any: list[str] = Field(default_factory=list)
    keywords_any: list[str] = Field(default_factory=list)
    status: list[StatusCategory] = Field(default_factory=list)
    days: list[Weekday] = Field(default_factory=list)
    between: str | None = Field(
        default=None,
        pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$",
        description="local time of day 'HH:MM-HH:MM' in the tier's calendar; may wrap midnight",
    )
    extra: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="criteria registered by plugins, by name -> options"
    )

    def is_empty(self) -> bool:
        """True when no condition is set (such a criterion would match everything)."""
        return not any(getattr(self, name) not in (None, [], {}) for name in type(self).model_fields)


class Move(_Strict):
    """Where a matched criterion sends the ticket."""

    to_tier: int | None = Field(default=None, ge=1)
    path: PathKind = PathKind.INTERNAL
    department: str | None = None
    level: int | None = Field(default=None, ge=1, description="hierarchical level")
    priority: str | None = None
    template: str | None = None
    bypass_timebox: bool = False
    bypass_required_information: bool = False

    @model_validator(mode="after")
    def _says_where(self) -> Move:
        if self.path is PathKind.INTERNAL and self.to_tier is None:
            raise ValueError("an internal move needs to_tier")
        if self.path is PathKind.FUNCTIONAL and not self.department:
            raise ValueError("a functional move needs department")
        if self.path is PathKind.HIERARCHICAL and self.level is None:
            raise ValueError("a hierarchical move needs level")
        return self


class Criterion(_Strict):
    """A row of the decision rules: when these conditions hold, make this move."""

    id: Name
    description: str = ""
    when: Conditions
    then: Move


class Department(_Strict):
    """A function outside support that tickets escalate to (engineering, product, sales)."""

    name: str
    targets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    raci: RaciSpec = RaciSpec()
    sla: SlaTargets = SlaTargets()


class ManagementLevel(_Strict):
    """One rung of the hierarchical path."""

    level: int = Field(ge=1)
    name: str
    people: list[str]
    reasons: list[str] = Field(
        default_factory=list, examples=[["budget", "deadline", "unacknowledged"]]
    )


class Paths(_Strict):
    """The functional and hierarchical paths; the internal path is the tiers themselves."""

    functional: dict[Name, Department] = Field(default_factory=dict)
    hierarchical: list[ManagementLevel] = Field(default_factory=list)


class SlaPolicy(_Strict):
    """How SLA clocks run: when they pause, when they warn."""

    pause_statuses: list[StatusCategory] = Field(
        default_factory=lambda: [StatusCategory.PENDING, StatusCategory.ON_HOLD]
    )
    warn_at_percent: list[Annotated[int, Field(gt=0, lt=100)]] = Field(
        default_factory=lambda: [50, 75]
    )


class ChannelConfig(_Strict):
    """A notification channel: a kind registered by a plugin, and where it sends."""

    kind: str
    to: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)


class Notifications(_Strict):
    """Notifications that repeat until acknowledged, then climb to the next level.

    Repeats are counted in business time of the tier's calendar, so an office-hours tier is not
    paged at night and a 24x7 tier is.
    """

    channels: dict[Name, ChannelConfig] = Field(default_factory=dict)
    default_channels: list[str] = Field(default_factory=list)
    repeat_every: Duration = Field(
        default=timedelta(minutes=15),
        description="business time of the tier's calendar between repeats of a notification",
    )
    max_repeats: int = Field(default=3, ge=0, description="repeats at one level before the next")


class DeescalationRule(_Strict):
    """When a ticket may come back down, and to which tier."""

    id: Name
    description: str = ""
    when: Conditions
    to_tier: int = Field(ge=1)


class Deescalation(_Strict):
    """De-escalation rules, with hysteresis so a ticket does not flap between tiers."""

    min_time_at_tier: Duration = timedelta(hours=1)
    rules: list[DeescalationRule] = Field(default_factory=list)


class FollowUp(_Strict):
    """Follow-up and closing rules."""

    review_open_after: Duration = Field(
        default=timedelta(days=30), description="an escalation open this long must be reviewed"
    )
    follow_up_after_resolved: Duration | None = timedelta(days=2)
    close_after_resolved: Duration = timedelta(days=7)


class TemplateSpec(_Strict):
    """A comment template; ``{placeholders}`` are filled by the engine."""

    text: str
    public: bool = False


class Policy(_Strict):
    """A whole escalation policy, as written in one file."""

    format: Literal[1] = Field(default=1, description="the policy file format")
    name: str
    description: str = ""
    default_calendar: str
    calendars: dict[Name, CalendarSpec] = Field(min_length=1)
    people: dict[Name, Person] = Field(default_factory=dict)
    connectors: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="each connector's own settings, under its name"
    )
    tiers: list[TierSpec] = Field(min_length=1)
    severities: list[str] = Field(
        default_factory=lambda: ["critical", "high", "medium", "low"],
        description="most severe first",
    )
    impact: list[ImpactLevel] = Field(
        default_factory=lambda: [
            ImpactLevel(name="widespread", users_at_least=50),
            ImpactLevel(name="many", users_at_least=10),
            ImpactLevel(name="some", users_at_least=2),
            ImpactLevel(name="single", users_at_least=0),
        ],
        description="impact bands, widest first",
    )
    matrix: dict[str, dict[str, MatrixCell]] = Field(
        default_factory=dict, description="severity -> impact -> what it calls for"
    )
    customers: Customers = Customers()
    criteria: list[Criterion] = Field(default_factory=list)
    paths: Paths = Paths()
    sla: SlaPolicy = SlaPolicy()
    notifications: Notifications = Notifications()
    deescalation: Deescalation = Deescalation()
    follow_up: FollowUp = FollowUp()
    templates: dict[Name, TemplateSpec] = Field(default_factory=dict)
    tag_prefix: str = Field(default="escalier", description="prefix of the tags Escalier sets")

    _version: str = PrivateAttr(default="unversioned")
    _source: str = PrivateAttr(default="<memory>")

    @property
    def version(self) -> str:
        """The policy version: a hash of the file's content."""
        return self._version

    @property
    def source(self) -> str:
        """The file this policy was read from."""
        return self._source

    @cached_property
    def tiers_by_level(self) -> dict[int, TierSpec]:
        """Tiers by level."""
        return {tier.level: tier for tier in self.tiers}

    @cached_property
    def calendars_built(self) -> dict[str, BusinessCalendar]:
        """Each calendar, built once."""
        return {name: spec.build(name) for name, spec in self.calendars.items()}

    def tier(self, level: int) -> TierSpec:
        """The tier at ``level``; KeyError if the policy has none."""
        return self.tiers_by_level[level]

    def calendar_for(self, level: int | None = None) -> BusinessCalendar:
        """The calendar of tier ``level``, or the default calendar."""
        name = self.default_calendar
        if level is not None and level in self.tiers_by_level:
            name = self.tiers_by_level[level].calendar or name
        return self.calendars_built[name]

    def impact_of(self, users_affected: int | None) -> str:
        """The name of the widest impact band ``users_affected`` reaches."""
        users = users_affected or 0
        for band in sorted(self.impact, key=lambda b: -b.users_at_least):
            if users >= band.users_at_least:
                return band.name
        return self.impact[-1].name

    def matrix_cell(self, severity: str | None, users_affected: int | None) -> MatrixCell | None:
        """What the matrix says for a severity and a number of affected users, if anything."""
        if severity is None:
            return None
        return self.matrix.get(severity, {}).get(self.impact_of(users_affected))

    def with_version(self, version: str, source: str) -> Policy:
        """This policy, marked with its content hash and the file it came from."""
        self._version = version
        self._source = source
        return self


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file, for editors and CI checks."""
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://escalier.dev/schema/policy-1.json"
    schema["title"] = "Escalier policy"
    return schema
