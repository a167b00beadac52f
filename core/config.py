"""Reading a policy file: every problem at once, each with file, line, path and a hint.

Validation runs in three passes over the same YAML document, and all three always run, so an
admin sees every mistake in one go:

1. shapes and types (the pydantic models of :mod:`escalier.core.policy`);
2. each connector's own section and each tier's target in that system (the connectors' models);
3. cross-references: calendars, people, tiers, templates, channels, departments named elsewhere.

The file itself is read here; the environment is passed in, never read, so the same file checks
the same way everywhere.
"""

from __future__ import annotations

import difflib
import hashlib
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from escalier.core.errors import ConfigError, ConfigProblem
from escalier.core.policy import Policy, SecretRef
from escalier.core.templates import DEFAULT_TEMPLATES

__all__ = ["PolicyDocument", "format_path", "load_policy", "read_policy"]

Loc = tuple[str | int, ...]


def format_path(loc: Iterable[str | int]) -> str:
    """``('tiers', 2, 'targets')`` -> ``'tiers[2].targets'``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class PolicyDocument:
    """A parsed policy file: its data, where each value sits, and the problems found so far."""

    def __init__(self, filename: str, text: str):
        self.filename = filename
        self.text = text
        self.version = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        self.data: Any = None
        self.lines: dict[Loc, int] = {}
        self.problems: list[ConfigProblem] = []
        self._parse()

    def line_of(self, loc: Loc) -> int | None:
        """The line of the deepest part of ``loc`` the file has."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def problem(self, loc: Loc, message: str, hint: str | None = None, *, severity: str = "error") -> None:
        """Record a problem at ``loc``."""
        self.problems.append(
            ConfigProblem(
                file=self.filename,
                line=self.line_of(loc),
                path=format_path(loc),
                message=message,
                hint=hint,
                severity=severity,
            )
        )

    @property
    def errors(self) -> list[ConfigProblem]:
        """The problems that make the file invalid."""
        return [p for p in self.problems if p.severity == "error"]

    def _parse(self) -> None:
        try:
            node = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            reason = getattr(exc, "problem", None) or str(exc)
            self.problems.append(
                ConfigProblem(
                    file=self.filename,
                    line=mark.line + 1 if mark else None,
                    path="",
                    message=f"YAML syntax error: {reason}",
                    hint="check indentation and quoting near this line",
                )
            )
            return
        if node is None:
            self.problems.append(ConfigProblem(self.filename, 1, "", "the file is empty"))
            return
        self._index(node, ())
        self.data = yaml.SafeLoader(self.text).construct_document(node)
        if not isinstance(self.data, dict):
            self.problems.append(
                ConfigProblem(self.filename, 1, "", "the policy must be a mapping of keys to values")
            )

    def _index(self, node: yaml.Node, loc: Loc) -> None:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                line = key_node.start_mark.line + 1
                if key in seen:
                    self.problems.append(
                        ConfigProblem(
                            self.filename,
                            line,
                            format_path((*loc, key)),
                            f"duplicate key '{key}' (first at line {seen[key]})",
                            "YAML keeps only the last one; remove or merge them",
                        )
                    )
                seen[key] = line
                self.lines[(*loc, key)] = line
                self._index(value_node, (*loc, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[(*loc, index)] = item.start_mark.line + 1
                self._index(item, (*loc, index))


def read_policy(
    path: str | Path,
    *,
    plugin_manager: Any = None,
    environ: Mapping[str, str] | None = None,
    lint: bool = False,
) -> tuple[Policy | None, list[ConfigProblem]]:
    """Validate a policy file; returns the policy (None if invalid) and every problem, warnings too.

    ``environ``, when given, is checked for the secrets the file references (a warning each);
    ``lint`` adds the linter's warnings about a valid policy.
    """
    path = Path(path)
    filename = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [ConfigProblem(filename, None, "", "no such file")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ConfigProblem(filename, None, "", f"cannot read the file: {exc}")]
    doc = PolicyDocument(filename, text)
    if not isinstance(doc.data, dict):
        return None, doc.problems
    if plugin_manager is None:
        from escalier.plugins import get_plugin_manager

        plugin_manager = get_plugin_manager()
    registry = _Registry.collect(plugin_manager)

    policy = _validate_shapes(doc)
    _validate_connectors(doc, registry)
    _validate_references(doc, registry)
    if environ is not None:
        _check_secrets(doc, environ)
    if doc.errors or policy is None:
        return None, doc.problems
    templates = {**registry.templates, **policy.templates}
    policy = policy.model_copy(update={"templates": templates})
    if lint:
        from escalier.core.lint import lint_policy

        lint_policy(policy, lambda loc, message, hint: doc.problem(loc, message, hint, severity="warning"),
                    connectors=registry.connectors)
    return policy.with_version(doc.version, filename), doc.problems


def load_policy(
    path: str | Path,
    *,
    plugin_manager: Any = None,
    environ: Mapping[str, str] | None = None,
) -> Policy:
    """The validated policy in ``path``; raises :class:`ConfigError` with every error found."""
    policy, problems = read_policy(path, plugin_manager=plugin_manager, environ=environ)
    if policy is None:
        raise ConfigError([p for p in problems if p.severity == "error"])
    return policy


class _Registry:
    """What the installed plugins offer a policy: connectors, channels, templates, criteria."""

    def __init__(self) -> None:
        self.connectors: dict[str, Any] = {}
        self.channels: dict[str, Any] = {}
        self.templates: dict[str, Any] = {}
        self.criteria: dict[str, Any] = {}

    @classmethod
    def collect(cls, pm: Any) -> _Registry:
        from escalier.core.policy import TemplateSpec

        registry = cls()
        for specs in pm.hook.register_connectors():
            registry.connectors.update({spec.name: spec for spec in specs})
        for specs in pm.hook.register_notification_channels():
            registry.channels.update({spec.kind: spec for spec in specs})
        for specs in pm.hook.register_comment_templates():
            registry.templates.update(
                {t.name: TemplateSpec(text=t.text, public=t.public) for t in specs}
            )
        for specs in pm.hook.register_criteria():
            registry.criteria.update({spec.name: spec for spec in specs})
        return registry


# --- pass 1: shapes and types -------------------------------------------------------------


def _validate_shapes(doc: PolicyDocument) -> Policy | None:
    try:
        return Policy.model_validate(doc.data)
    except ValidationError as exc:
        _report(doc, exc, (), Policy)
        return None


def _report(doc: PolicyDocument, exc: ValidationError, prefix: Loc, model: type[BaseModel]) -> None:
    """Turn pydantic's errors into located problems, one per place, unions folded together."""
    by_place: dict[Loc, list[dict[str, Any]]] = {}
    for error in exc.errors(include_url=False):
        loc = _real_loc(doc.data, (*prefix, *error["loc"]))
        by_place.setdefault(loc, []).append(error)
    for loc, errors in by_place.items():
        first = errors[0]
        kind = first["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc[len(prefix) : -1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else (
                f"allowed here: {', '.join(sorted(allowed))}" if allowed else None
            )
            doc.problem(loc, f"unknown key '{loc[-1]}'", hint)
        elif kind == "missing":
            doc.problem(loc, f"missing required key '{loc[-1]}'")
        else:
            messages = list(dict.fromkeys(_message(e) for e in errors))
            hint = None
            if isinstance(first.get("input"), bool):
                hint = "YAML reads yes/no/on/off/NO as true or false: put the value in quotes"
            doc.problem(loc, " or ".join(messages), hint)


def _message(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if error["type"] in {"string_type", "int_type", "int_parsing", "float_parsing", "bool_type",
                         "dict_type", "list_type", "literal_error", "string_pattern_mismatch",
                         "date_from_datetime_parsing", "date_parsing", "model_type"}:
        message = f"{message}; got {_show(error.get('input'))}"
    return message


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _real_loc(data: Any, loc: Loc) -> Loc:
    """Drop the parts of a pydantic location that name union branches, not places in the file."""
    real: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            real.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            real.append(part)
        elif index == len(loc) - 1 and isinstance(node, dict):
            real.append(part)  # a missing key
        # else: a union tag such as 'list[str]' or "literal['24x7']"
    return tuple(real)


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys a mapping at ``loc`` (below ``model``) may have, when it is a model."""
    annotation: Any = model
    for part in loc:
        annotation = _descend(annotation, part)
        if annotation is None:
            return []
    for candidate in _branches(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return [f.alias or name for name, f in candidate.model_fields.items()]
    return []


def _branches(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _branches(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [b for arg in typing.get_args(annotation) for b in _branches(arg)]
    return [annotation]


def _descend(annotation: Any, part: str | int) -> Any:
    for candidate in _branches(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            field = candidate.model_fields.get(str(part))
            if field is not None:
                return field.annotation
        origin = typing.get_origin(candidate)
        if origin is list and isinstance(part, int):
            return typing.get_args(candidate)[0]
        if origin is dict and not isinstance(part, int):
            return typing.get_args(candidate)[1]
    return None


# --- pass 2: connector sections and targets ----------------------------------------------------


def _validate_connectors(doc: PolicyDocument, registry: _Registry) -> None:
    data = doc.data
    connectors = data.get("connectors")
    configs: dict[str, Any] = {}
    if isinstance(connectors, dict):
        for name, section in connectors.items():
            spec = registry.connectors.get(name)
            if spec is None:
                _unknown(doc, ("connectors", name), "connector", name, registry.connectors)
                continue
            try:
                configs[name] = spec.config_model.model_validate(section or {})
            except ValidationError as exc:
                _report(doc, exc, ("connectors", name), spec.config_model)

    people = data.get("people") if isinstance(data.get("people"), dict) else {}
    for loc, targets in _all_targets(data):
        for system, target in targets.items():
            spec = registry.connectors.get(system)
            where = (*loc, system)
            if spec is None:
                _unknown(doc, where, "connector", system, registry.connectors)
                continue
            if system not in configs:
                if not (isinstance(connectors, dict) and system in connectors):
                    doc.problem(
                        where,
                        f"targets {system}, but connectors.{system} is not configured",
                        f"add a '{system}:' section under connectors",
                    )
                continue
            try:
                model = spec.target_model.model_validate(target or {})
            except ValidationError as exc:
                _report(doc, exc, where, spec.target_model)
                continue
            if spec.check_target is not None:
                for sub, message in spec.check_target(configs[system], model, people):
                    doc.problem((*where, sub) if sub else where, message)


def _all_targets(data: Mapping[str, Any]) -> Iterator[tuple[Loc, dict[str, Any]]]:
    for index, tier in enumerate(_list(data.get("tiers"))):
        if isinstance(tier, dict) and isinstance(tier.get("targets"), dict):
            yield ("tiers", index, "targets"), tier["targets"]
    paths = data.get("paths")
    if isinstance(paths, dict) and isinstance(paths.get("functional"), dict):
        for name, dept in paths["functional"].items():
            if isinstance(dept, dict) and isinstance(dept.get("targets"), dict):
                yield ("paths", "functional", name, "targets"), dept["targets"]


# --- pass 3: cross-references ----------------------------------------------------------------


def _validate_references(doc: PolicyDocument, registry: _Registry) -> None:
    data = doc.data
    calendars = _dict(data.get("calendars"))
    people = _dict(data.get("people"))
    templates = {**registry.templates, **_dict(data.get("templates"))}
    channels = _dict(_dict(data.get("notifications")).get("channels"))
    paths = _dict(data.get("paths"))
    departments = _dict(paths.get("functional"))
    levels = {
        lvl.get("level") for lvl in _list(paths.get("hierarchical")) if isinstance(lvl, dict)
    }
    severities = [s for s in _list(data.get("severities"))] or ["critical", "high", "medium", "low"]
    impact_names = [b.get("name") for b in _list(data.get("impact")) if isinstance(b, dict)]
    if not data.get("impact"):
        impact_names = ["widespread", "many", "some", "single"]

    def calendar(loc: Loc, name: Any) -> None:
        if isinstance(name, str) and name not in calendars:
            _unknown(doc, loc, "calendar", name, calendars)

    def person_list(loc: Loc, names: Any, *, allow: tuple[str, ...] = ()) -> None:
        for index, name in enumerate(_list(names)):
            if not isinstance(name, str) or name in allow or name in people:
                continue
            if name.startswith("channel:"):
                if "channel" in allow and name[8:] not in channels:
                    _unknown(doc, (*loc, index), "channel", name[8:], channels)
                elif "channel" not in allow:
                    doc.problem((*loc, index), "only informed may name a channel")
                continue
            _unknown(doc, (*loc, index), "person", name, people)

    def template(loc: Loc, name: Any) -> None:
        if isinstance(name, str) and name not in templates and name not in DEFAULT_TEMPLATES:
            _unknown(doc, loc, "template", name, templates)

    def raci(loc: Loc, spec: Any) -> None:
        spec = _dict(spec)
        person_list((*loc, "responsible"), spec.get("responsible"), allow=("target",))
        person_list((*loc, "accountable"), spec.get("accountable"))
        person_list((*loc, "consulted"), spec.get("consulted"))
        person_list((*loc, "informed"), spec.get("informed"), allow=("channel",))

    calendar(("default_calendar",), data.get("default_calendar"))

    tier_levels: list[int] = []
    for index, tier in enumerate(_list(data.get("tiers"))):
        if not isinstance(tier, dict):
            continue
        loc = ("tiers", index)
        level = tier.get("level")
        if isinstance(level, int):
            if level in tier_levels:
                doc.problem((*loc, "level"), f"tier {level} is defined twice")
            tier_levels.append(level)
        calendar((*loc, "calendar"), tier.get("calendar"))
        raci((*loc, "raci"), tier.get("raci"))
        template((*loc, "missing_information_template"), tier.get("missing_information_template"))
        for c_index, name in enumerate(_list(_dict(tier.get("notify")).get("channels"))):
            if isinstance(name, str) and name not in channels:
                _unknown(doc, (*loc, "notify", "channels", c_index), "channel", name, channels)
    expected = list(range(1, len(tier_levels) + 1))
    if tier_levels and sorted(tier_levels) != expected:
        doc.problem(
            ("tiers",),
            f"tier levels must run 1..{len(tier_levels)} without gaps; found {sorted(tier_levels)}",
        )
    known_tiers = set(tier_levels)

    def tier_ref(loc: Loc, level: Any) -> None:
        if isinstance(level, int) and not isinstance(level, bool) and level not in known_tiers:
            doc.problem(loc, f"tier {level} is not defined (tiers: {sorted(known_tiers)})")

    for severity, row in _dict(data.get("matrix")).items():
        if severity not in severities:
            _unknown(doc, ("matrix", severity), "severity", severity, dict.fromkeys(severities))
        for impact, cell in _dict(row).items():
            if impact not in impact_names:
                _unknown(doc, ("matrix", severity, impact), "impact level", impact,
                         dict.fromkeys(impact_names))
            tier_ref(("matrix", severity, impact, "tier"), _dict(cell).get("tier"))

    for index, criterion in enumerate(_list(data.get("criteria"))):
        criterion = _dict(criterion)
        loc = ("criteria", index)
        when = _dict(criterion.get("when"))
        for t_index, level in enumerate(_list(when.get("tier"))):
            tier_ref((*loc, "when", "tier", t_index), level)
        for s_index, severity in enumerate(_list(when.get("severity"))):
            if severity not in severities:
                _unknown(doc, (*loc, "when", "severity", s_index), "severity", severity,
                         dict.fromkeys(severities))
        for name, options in _dict(when.get("extra")).items():
            spec = registry.criteria.get(name)
            if spec is None:
                _unknown(doc, (*loc, "when", "extra", name), "criterion", name, registry.criteria)
                continue
            try:
                spec.options_model.model_validate(options or {})
            except ValidationError as exc:
                _report(doc, exc, (*loc, "when", "extra", name), spec.options_model)
        then = _dict(criterion.get("then"))
        tier_ref((*loc, "then", "to_tier"), then.get("to_tier"))
        template((*loc, "then", "template"), then.get("template"))
        department = then.get("department")
        if isinstance(department, str) and department not in departments:
            _unknown(doc, (*loc, "then", "department"), "department", department, departments)
        level = then.get("level")
        if isinstance(level, int) and level not in levels:
            doc.problem((*loc, "then", "level"), f"hierarchical level {level} is not defined under paths.hierarchical")

    for index, rule in enumerate(_list(_dict(data.get("deescalation")).get("rules"))):
        tier_ref(("deescalation", "rules", index, "to_tier"), _dict(rule).get("to_tier"))

    for name, dept in departments.items():
        raci(("paths", "functional", name, "raci"), _dict(dept).get("raci"))
    for index, level in enumerate(_list(paths.get("hierarchical"))):
        person_list(("paths", "hierarchical", index, "people"), _dict(level).get("people"))

    notifications = _dict(data.get("notifications"))
    for index, name in enumerate(_list(notifications.get("default_channels"))):
        if isinstance(name, str) and name not in channels:
            _unknown(doc, ("notifications", "default_channels", index), "channel", name, channels)
    for name, channel in channels.items():
        kind = _dict(channel).get("kind")
        if not isinstance(kind, str):
            continue
        spec = registry.channels.get(kind)
        loc = ("notifications", "channels", name, "kind")
        if spec is None:
            _unknown(doc, loc, "channel kind", kind, registry.channels)
            continue
        try:
            spec.options_model.model_validate(_dict(channel).get("options") or {})
        except ValidationError as exc:
            _report(doc, exc, ("notifications", "channels", name, "options"), spec.options_model)


def _unknown(doc: PolicyDocument, loc: Loc, what: str, name: Any, known: Mapping[str, Any]) -> None:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    if close:
        hint = f"did you mean '{close[0]}'?"
    elif known:
        hint = f"known: {', '.join(sorted(str(k) for k in known))}"
    else:
        hint = f"no {what} is defined"
    doc.problem(loc, f"'{name}' is not a defined {what}", hint)


def _check_secrets(doc: PolicyDocument, environ: Mapping[str, str]) -> None:
    for loc, value in _walk(doc.data, ()):
        try:
            ref = SecretRef.model_validate(value)
        except ValidationError:
            continue
        if ref.env not in environ:
            doc.problem(loc, f"the environment variable {ref.env} is not set", severity="warning")


def _walk(node: Any, loc: Loc) -> Iterator[tuple[Loc, Any]]:
    if isinstance(node, dict):
        if set(node) == {"$env"}:
            yield loc, node
            return
        for key, value in node.items():
            yield from _walk(value, (*loc, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*loc, index))
    elif isinstance(node, str) and node.startswith("${") and node.endswith("}"):
        yield loc, node


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
