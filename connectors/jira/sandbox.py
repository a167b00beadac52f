"""A Jira site in memory: the REST API subset Escalier and the ``jira`` client use, and real webhooks.

Two flavours, as Escalier meets them: ``deployment="cloud"`` (basic auth with an email and an API
token, users by ``accountId``, search through ``/search/jql`` with ``nextPageToken``) and
``deployment="datacenter"`` (a bearer personal access token, users by ``name``, search through
``/search`` with ``startAt``/``total``). Every change, made through the API or by a person through
the Python helpers, sends the webhooks Jira sends, in Jira's shapes per flavour, signed with
``X-Hub-Signature: sha256=<hex>``.

The seeded site mirrors ``examples/escalier.yaml``: a Service Management project ``SUP`` with the
components ``Support L1``, ``Support L2``, ``Platform`` and ``Billing``, a software project ``ENG``,
the example's people by the same accountIds, Escalier's own service account, and a customer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from escalier.connectors._sandbox import (
    DEFAULT_RETRY_DELAYS,
    HTTPProblem,
    Request,
    Response,
    Sandbox,
    basic_credentials,
    bearer_token,
)

__all__ = ["JiraSandbox"]

Deployment = Literal["cloud", "datacenter"]

_UNSET: Any = object()

# (id, name, category id); the category decides the SLA meaning (new, indeterminate, done).
_STATUSES = (
    ("10000", "To Do", 2),
    ("3", "In Progress", 4),
    ("10001", "Waiting for customer", 4),
    ("10002", "Done", 3),
)
_CATEGORIES = {
    2: ("new", "blue-gray", "To Do"),
    4: ("indeterminate", "yellow", "In Progress"),
    3: ("done", "green", "Done"),
}
# (id, name, from status names or None for any, to status name); names are the target's, as in
# Jira's simplified workflows, plus Reopen.
_TRANSITIONS = (
    ("11", "To Do", ("In Progress", "Waiting for customer"), "To Do"),
    ("21", "In Progress", ("To Do", "Waiting for customer"), "In Progress"),
    ("41", "Waiting for customer", ("To Do", "In Progress"), "Waiting for customer"),
    ("31", "Done", ("To Do", "In Progress", "Waiting for customer"), "Done"),
    ("51", "Reopen", ("Done",), "To Do"),
)
_PRIORITIES = (
    ("1", "Highest", "#d04437"),
    ("2", "High", "#f15C75"),
    ("3", "Medium", "#f79232"),
    ("4", "Low", "#707070"),
    ("5", "Lowest", "#999999"),
)
_ISSUE_TYPES = (
    ("10001", "Task", "A task that needs to be done."),
    ("10002", "Bug", "A problem which impairs or prevents the functions of the product."),
    ("10003", "Incident", "For system outages or incidents."),
    ("10004", "Service Request", "Requests for help or information."),
)
_RESOLUTION = {"id": "10000", "name": "Done", "description": "Work has been completed on this issue."}
# (id, name, type, options); select options get ids 10100 upwards.
_CUSTOM_FIELDS = (
    ("customfield_10050", "Severity", "select", ("critical", "high", "medium", "low")),
    ("customfield_10051", "Users affected", "number", ()),
    ("customfield_10052", "Organization", "string", ()),
    ("customfield_10060", "Steps to reproduce", "textarea", ()),
    ("customfield_10061", "Business impact", "textarea", ()),
)
# (id, name, clause names, schema type, searchable, orderable)
_SYSTEM_FIELDS = (
    ("summary", "Summary", ("summary",), "string"),
    ("description", "Description", ("description",), "string"),
    ("issuetype", "Issue Type", ("issuetype", "type"), "issuetype"),
    ("project", "Project", ("project",), "project"),
    ("status", "Status", ("status",), "status"),
    ("priority", "Priority", ("priority",), "priority"),
    ("labels", "Labels", ("labels",), "array"),
    ("components", "Component/s", ("component",), "array"),
    ("assignee", "Assignee", ("assignee",), "user"),
    ("reporter", "Reporter", ("reporter",), "user"),
    ("creator", "Creator", ("creator",), "user"),
    ("created", "Created", ("created", "createdDate"), "datetime"),
    ("updated", "Updated", ("updated", "updatedDate"), "datetime"),
    ("resolution", "Resolution", ("resolution",), "resolution"),
    ("resolutiondate", "Resolved", ("resolutiondate", "resolved"), "datetime"),
    ("statuscategorychangedate", "Status Category Changed", ("statusCategoryChangedDate",), "datetime"),
    ("comment", "Comment", ("comment",), "comments-page"),
    ("watches", "Watchers", ("watchers",), "watches"),
    ("issuekey", "Key", ("id", "issue", "issuekey", "key"), "string"),
)
_CHANGE_NAMES = {"components": "Component", "issuetype": "issuetype"}

_NOT_FOUND = "Issue does not exist or you do not have permission to see it."
_UNAUTHENTICATED = "You are not authenticated. Authentication required to perform this operation."


class JiraSandbox(Sandbox):
    """A Jira Cloud or Data Center site in memory, serving its REST API and sending its webhooks."""

    name = "jira"

    def __init__(
        self,
        *,
        deployment: Deployment = "cloud",
        user: str = "escalier@example.com",
        token: str = "sandbox-token",
        time_zone: str = "Etc/UTC",
        host: str = "127.0.0.1",
        port: int = 0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if deployment not in ("cloud", "datacenter"):
            raise ValueError(f"deployment must be 'cloud' or 'datacenter', not {deployment!r}")
        self.deployment: Deployment = deployment
        self.api_user = user
        self.api_token = token
        self.time_zone = time_zone
        super().__init__(
            host=host,
            port=port,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            webhook_retry_delays=webhook_retry_delays,
            clock=clock,
        )

    @property
    def cloud(self) -> bool:
        """True for the Cloud flavour."""
        return self.deployment == "cloud"

    # --- data ----------------------------------------------------------------------------------

    def seed(self) -> None:
        """The example site: projects SUP (Service Management) and ENG, the example's people."""
        self._users: dict[str, dict[str, Any]] = {}
        self._projects: dict[str, dict[str, Any]] = {}
        self._issues: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, str] = {}
        self._notifications: list[dict[str, Any]] = []
        self._ids = {"issue": 10000, "comment": 10000, "history": 10100, "project": 10000, "component": 10000}
        self._options = {
            fid: {value: str(10100 + 10 * n + i) for i, value in enumerate(options)}
            for n, (fid, _, kind, options) in enumerate(_CUSTOM_FIELDS)
            if kind == "select"
        }
        self._me = self.add_user(
            "escalier",
            "Escalier",
            email=self.api_user,
            time_zone=self.time_zone,
            account_id="712020:2a8f6c1e-0c4e-4b4e-9b8a-5e6f7a8b9c0d",
        )["handle"]
        for handle, display, account_id in (
            ("mia", "Mia Hoffmann", "5b10ac8d82e05b22cc7d4ef5"),
            ("jonas", "Jonas Weber", "5b10a2844c20165700ede21g"),
            ("priya", "Priya Raman", "5d53f3cbc6b9320d9ea5bdc2"),
            ("tomas", "Tomas Novak", "557058:f58131cb-b67d-43c7-b30d-6b58d40bd077"),
        ):
            self.add_user(handle, display, email=f"{handle}@northwind.example", account_id=account_id)
        self.add_user(
            "dana",
            "Dana Customer",
            email="dana@customer.example",
            account_type="customer",
            account_id="qm:6f1c2a9e-d4b7-4e2b-9c1a-0e8d7b6a5f43:5e0f3c4d-2b1a-4c9d-8e7f-6a5b4c3d2e1f",
        )
        self.add_project(
            "SUP",
            "Support",
            service_desk=True,
            components=("Support L1", "Support L2", "Platform", "Billing"),
        )
        self.add_project("ENG", "Engineering", components=("Backend", "Frontend"))

    def _next(self, kind: str) -> str:
        self._ids[kind] += 1
        return str(self._ids[kind])

    def add_user(
        self,
        name: str,
        display_name: str | None = None,
        *,
        email: str | None = None,
        account_id: str | None = None,
        account_type: Literal["atlassian", "customer", "app"] = "atlassian",
        time_zone: str = "Etc/UTC",
        active: bool = True,
    ) -> dict[str, Any]:
        """Add a person: ``name`` is the Data Center username and the helpers' handle.

        Returns the user as this flavour's API shows it, plus ``handle``.
        """
        with self.lock:
            account_id = account_id or hashlib.sha1(name.encode()).hexdigest()[:24]
            self._users[name] = {
                "handle": name,
                "account_id": account_id,
                "name": name,
                "key": f"JIRAUSER{10000 + len(self._users)}" if account_type != "atlassian" else name,
                "email": email,
                "display_name": display_name or name,
                "account_type": account_type,
                "time_zone": time_zone,
                "active": active,
            }
            return {**self._user_json(name), "handle": name}

    def add_project(
        self, key: str, name: str | None = None, *, service_desk: bool = False, components: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Add a project; ``service_desk=True`` makes it a Service Management project."""
        with self.lock:
            project = {
                "id": self._next("project"),
                "key": key,
                "name": name or key,
                "service_desk": service_desk,
                "components": [{"id": self._next("component"), "name": c} for c in components],
                "counter": 0,
            }
            self._projects[key] = project
            return self._project_json(project)

    # --- rendering -----------------------------------------------------------------------------

    def _api(self, tail: str) -> str:
        return f"{self.url}/rest/api/2/{tail}"

    def _date(self, moment: datetime) -> str:
        moment = moment.astimezone(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"

    def _user_ref(self, handle: str) -> str:
        """How this flavour names a user in a changelog, a watcher list or an assignee body."""
        user = self._users[handle]
        return user["account_id"] if self.cloud else user["name"]

    def _user_json(self, handle: str | None) -> dict[str, Any] | None:
        if handle is None:
            return None
        user = self._users[handle]
        avatar = hashlib.md5((user["email"] or user["name"]).encode()).hexdigest()
        avatars = {
            size: f"{self.url}/secure/useravatar?size={size}&avatar={avatar}"
            for size in ("48x48", "24x24", "16x16", "32x32")
        }
        if self.cloud:
            out: dict[str, Any] = {
                "self": self._api(f"user?accountId={user['account_id']}"),
                "accountId": user["account_id"],
                "accountType": user["account_type"],
            }
            # Cloud hides most people's email; customers' never show.
            if user["email"] and user["account_type"] == "atlassian":
                out["emailAddress"] = user["email"]
        else:
            out = {
                "self": self._api(f"user?username={user['name']}"),
                "name": user["name"],
                "key": user["key"],
                "emailAddress": user["email"] or "",
            }
        out.update(
            avatarUrls=avatars,
            displayName=user["display_name"],
            active=user["active"],
            timeZone=user["time_zone"],
        )
        return out

    def _status_json(self, status_id: str) -> dict[str, Any]:
        sid, name, category = next(s for s in _STATUSES if s[0] == status_id)
        key, color, category_name = _CATEGORIES[category]
        return {
            "self": self._api(f"status/{sid}"),
            "description": "",
            "iconUrl": f"{self.url}/images/icons/statuses/generic.png",
            "name": name,
            "id": sid,
            "statusCategory": {
                "self": self._api(f"statuscategory/{category}"),
                "id": category,
                "key": key,
                "colorName": color,
                "name": category_name,
            },
        }

    def _priority_json(self, priority_id: str | None) -> dict[str, Any] | None:
        if priority_id is None:
            return None
        pid, name, _ = next(p for p in _PRIORITIES if p[0] == priority_id)
        return {
            "self": self._api(f"priority/{pid}"),
            "iconUrl": f"{self.url}/images/icons/priorities/{name.lower()}.svg",
            "name": name,
            "id": pid,
        }

    def _issuetype_json(self, type_id: str) -> dict[str, Any]:
        tid, name, description = next(t for t in _ISSUE_TYPES if t[0] == type_id)
        return {
            "self": self._api(f"issuetype/{tid}"),
            "id": tid,
            "description": description,
            "iconUrl": f"{self.url}/secure/viewavatar?size=xsmall&avatarId={tid}&avatarType=issuetype",
            "name": name,
            "subtask": False,
            "avatarId": int(tid),
        }

    def _project_ref(self, project: dict[str, Any]) -> dict[str, Any]:
        return {
            "self": self._api(f"project/{project['id']}"),
            "id": project["id"],
            "key": project["key"],
            "name": project["name"],
            "projectTypeKey": "service_desk" if project["service_desk"] else "software",
            "avatarUrls": {
                size: f"{self.url}/secure/projectavatar?size={size}&pid={project['id']}"
                for size in ("48x48", "24x24", "16x16", "32x32")
            },
        }

    def _project_json(self, project: dict[str, Any]) -> dict[str, Any]:
        return {
            "expand": "description,lead,issueTypes,url,projectKeys,permissions,insight",
            **self._project_ref(project),
            "description": "",
            "lead": self._user_json(self._me),
            "components": [self._component_json(c) for c in project["components"]],
            "issueTypes": [self._issuetype_json(t[0]) for t in _ISSUE_TYPES],
            "assigneeType": "UNASSIGNED",
            "simplified": False,
            "style": "classic",
            "isPrivate": False,
        }

    def _component_json(self, component: dict[str, Any]) -> dict[str, Any]:
        return {
            "self": self._api(f"component/{component['id']}"),
            "id": component["id"],
            "name": component["name"],
        }

    def _custom_value_json(self, field_id: str, value: Any) -> Any:
        kind = _custom(field_id)[2]
        if value is None:
            return None
        if kind == "select":
            return {
                "self": self._api(f"customFieldOption/{value}"),
                "value": self._option_value(field_id, value),
                "id": value,
            }
        return value

    def _option_value(self, field_id: str, option_id: str) -> str:
        return next(v for v, i in self._options[field_id].items() if i == option_id)

    def _comment_json(
        self, issue: dict[str, Any], comment: dict[str, Any], *, properties: bool = False
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "self": self._api(f"issue/{issue['id']}/comment/{comment['id']}"),
            "id": comment["id"],
            "author": self._user_json(comment["author"]),
            "body": comment["body"],
            "updateAuthor": self._user_json(comment["update_author"]),
            "created": self._date(comment["created"]),
            "updated": self._date(comment["updated"]),
        }
        if comment["visibility"]:
            out["visibility"] = comment["visibility"]
        if self._projects[issue["project"]]["service_desk"]:
            out["jsdPublic"] = not _internal(comment["properties"])
        if properties:
            out["properties"] = comment["properties"]
        return out

    def _history_json(self, history: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": history["id"],
            "author": self._user_json(history["author"]),
            "created": self._date(history["created"]),
            "items": [self._item_json(item) for item in history["items"]],
        }

    def _item_json(self, item: dict[str, Any]) -> dict[str, Any]:
        # fieldId is Cloud's; Data Center's changelog items never carry it.
        return dict(item) if self.cloud else {k: v for k, v in item.items() if k != "fieldId"}

    def _all_fields(self, issue: dict[str, Any]) -> dict[str, Any]:
        project = self._projects[issue["project"]]
        components = {c["id"]: c for c in project["components"]}
        fields: dict[str, Any] = {
            "summary": issue["summary"],
            "description": issue["description"],
            "issuetype": self._issuetype_json(issue["issuetype"]),
            "project": self._project_ref(project),
            "status": self._status_json(issue["status"]),
            "priority": self._priority_json(issue["priority"]),
            "labels": list(issue["labels"]),
            "components": [self._component_json(components[c]) for c in issue["components"]],
            "assignee": self._user_json(issue["assignee"]),
            "reporter": self._user_json(issue["reporter"]),
            "creator": self._user_json(issue["creator"]),
            "created": self._date(issue["created"]),
            "updated": self._date(issue["updated"]),
            "resolution": dict(_RESOLUTION, self=self._api(f"resolution/{_RESOLUTION['id']}"))
            if issue["resolution"]
            else None,
            "resolutiondate": self._date(issue["resolutiondate"]) if issue["resolutiondate"] else None,
            "statuscategorychangedate": self._date(issue["status_changed"]),
            "watches": {
                "self": self._api(f"issue/{issue['key']}/watchers"),
                "watchCount": len(issue["watchers"]),
                "isWatching": self._me in issue["watchers"],
            },
            "comment": {
                "comments": [self._comment_json(issue, c) for c in issue["comments"]],
                "self": self._api(f"issue/{issue['id']}/comment"),
                "maxResults": len(issue["comments"]),
                "total": len(issue["comments"]),
                "startAt": 0,
            },
            "duedate": None,
            "lastViewed": None,
        }
        for fid, *_ in _CUSTOM_FIELDS:
            fields[fid] = self._custom_value_json(fid, issue["custom"].get(fid))
        return fields

    def _issue_json(
        self,
        issue: dict[str, Any],
        *,
        fields: Sequence[str] | None = None,
        expand: Iterable[str] = (),
        properties: Sequence[str] = (),
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
            "id": issue["id"],
            "self": self._api(f"issue/{issue['id']}"),
            "key": issue["key"],
        }
        wanted = _wanted_fields(fields)
        every = self._all_fields(issue)
        out["fields"] = every if wanted is None else {k: v for k, v in every.items() if wanted(k)}
        if "changelog" in set(expand):
            histories = [self._history_json(h) for h in issue["histories"]]
            out["changelog"] = {
                "startAt": 0,
                "maxResults": len(histories),
                "total": len(histories),
                "histories": histories,
            }
        if properties:
            names = set(issue["properties"]) if "*all" in properties else set(properties)
            out["properties"] = {k: v for k, v in issue["properties"].items() if k in names}
        return out

    def _webhook_issue(self, issue: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": issue["id"],
            "self": self._api(f"issue/{issue['id']}"),
            "key": issue["key"],
            "fields": self._all_fields(issue),
        }

    # --- routes --------------------------------------------------------------------------------

    def register_routes(self) -> None:
        """Jira's REST API v2 (and v3/latest where the same answer does), by route template."""
        api = [
            ("GET", "serverInfo", self._get_server_info),
            ("GET", "myself", self._get_myself),
            ("GET", "field", self._get_fields),
            (
                "GET",
                "priority",
                lambda r: (
                    200,
                    {},
                    [
                        self._priority_json(p[0]) | {"statusColor": p[2], "description": p[1]}
                        for p in _PRIORITIES
                    ],
                ),
            ),
            ("GET", "status", lambda r: (200, {}, [self._status_json(s[0]) for s in _STATUSES])),
            ("GET", "issuetype", lambda r: (200, {}, [self._issuetype_json(t[0]) for t in _ISSUE_TYPES])),
            (
                "GET",
                "resolution",
                lambda r: (200, {}, [dict(_RESOLUTION, self=self._api("resolution/10000"))]),
            ),
            ("GET", "project/{projectIdOrKey}", self._get_project),
            ("GET", "user", self._get_user),
            ("GET", "user/search", self._search_users),
            ("GET", "user/assignable/search", self._assignable_users),
            ("POST", "issue", self._post_issue),
            ("GET", "issue/{issueIdOrKey}", self._get_issue),
            ("PUT", "issue/{issueIdOrKey}", self._put_issue),
            ("DELETE", "issue/{issueIdOrKey}", self._delete_issue),
            ("PUT", "issue/{issueIdOrKey}/assignee", self._put_assignee),
            ("GET", "issue/{issueIdOrKey}/comment", self._get_comments),
            ("POST", "issue/{issueIdOrKey}/comment", self._post_comment),
            ("GET", "issue/{issueIdOrKey}/comment/{id}", self._get_comment),
            ("PUT", "issue/{issueIdOrKey}/comment/{id}", self._put_comment),
            ("DELETE", "issue/{issueIdOrKey}/comment/{id}", self._delete_comment),
            ("GET", "issue/{issueIdOrKey}/transitions", self._get_transitions),
            ("POST", "issue/{issueIdOrKey}/transitions", self._post_transition),
            ("GET", "issue/{issueIdOrKey}/watchers", self._get_watchers),
            ("POST", "issue/{issueIdOrKey}/watchers", self._post_watcher),
            ("DELETE", "issue/{issueIdOrKey}/watchers", self._delete_watcher),
            ("POST", "issue/{issueIdOrKey}/notify", self._post_notify),
            ("GET", "issue/{issueIdOrKey}/properties", self._get_property_keys),
            ("GET", "issue/{issueIdOrKey}/properties/{propertyKey}", self._get_property),
            ("PUT", "issue/{issueIdOrKey}/properties/{propertyKey}", self._put_property),
            ("DELETE", "issue/{issueIdOrKey}/properties/{propertyKey}", self._delete_property),
        ]
        if self.cloud:
            api += [
                ("GET", "search/jql", self._search_jql),
                ("POST", "search/jql", self._search_jql),
                # Cloud removed the offset search in 2025; a client still using it is told so.
                ("GET", "search", self._search_removed),
                ("POST", "search", self._search_removed),
                ("GET", "issue/{issueIdOrKey}/changelog", self._get_changelog),
            ]
        else:
            api += [("GET", "search", self._search_offset), ("POST", "search", self._search_offset)]
        # Data Center has no REST API v3.
        versions = ("2", "3", "latest") if self.cloud else ("2", "latest")
        for version in versions:
            for method, tail, handler in api:
                self.add_route(method, f"/rest/api/{version}/{tail}", handler)

    def authenticate(self, request: Request) -> Response | None:
        """Cloud: basic auth with the email and API token; Data Center: a bearer PAT."""
        auth = request.headers.get("Authorization")
        if self.cloud:
            ok = basic_credentials(request.headers) == (self.api_user, self.api_token)
        else:
            ok = bearer_token(request.headers) == self.api_token
        if ok:
            return None
        if auth is None and request.path.endswith("/serverInfo"):
            return None  # Jira answers serverInfo anonymously
        status, headers, body = self.error(401, _UNAUTHENTICATED)
        return (
            status,
            {**headers, "X-Seraph-LoginReason": "AUTHENTICATED_FAILED" if auth else "AUTHENTICATION_DENIED"},
            body,
        )

    def error(self, status: int, message: str, *, errors: Mapping[str, str] | None = None) -> Response:
        """Jira's error shape: ``{"errorMessages": [...], "errors": {...}}``."""
        return status, {}, {"errorMessages": [message] if message else [], "errors": dict(errors or {})}

    def sign(self, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        """``X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``."""
        digest = hmac.new((self.webhook_secret or "").encode(), body, hashlib.sha256).hexdigest()
        return {**headers, "X-Hub-Signature": f"sha256={digest}"}

    def retry_headers(self, attempt: int) -> dict[str, str]:
        """Jira counts its retries in ``X-Atlassian-Webhook-Retry``."""
        return {"X-Atlassian-Webhook-Retry": str(attempt)}

    def policy_snippet(self) -> str:
        """The ``connectors: jira:`` block pointing at this sandbox, and what to export."""
        secret_line = (
            '    webhook_secrets: ["${JIRA_WEBHOOK_SECRET}"]\n'
            if self.webhook_secret
            else "    # webhook_secrets: start the sandbox with --webhook-secret to sign its webhooks\n"
        )
        user_line = f"    user: {self.api_user}\n" if self.cloud else ""
        exports = f"  export JIRA_API_TOKEN={self.api_token}\n"
        if self.webhook_secret:
            exports += f"  export JIRA_WEBHOOK_SECRET={self.webhook_secret}\n"
        people = "".join(
            f"  {u['display_name']:<14} jira: {self._user_ref(h)}\n"
            for h, u in self._users.items()
            if h != self._me and u["account_type"] == "atlassian"
        )
        return (
            "In the policy file:\n"
            "connectors:\n"
            "  jira:\n"
            f"    url: {self.url}\n"
            f"    deployment: {self.deployment}\n"
            f"{user_line}"
            "    token: ${JIRA_API_TOKEN}\n"
            f"{secret_line}"
            "    project: SUP\n"
            "    components: [Support L1, Support L2, Platform, Billing]\n"
            "    service_desk_projects: [SUP]\n"
            f"    service_account: {self.service_account}\n"
            "\nand in the shell:\n"
            f"{exports}"
            "\nPeople on this site (for the policy's people):\n"
            f"{people}"
        )

    # --- handlers: site ------------------------------------------------------------------------

    def _get_server_info(self, request: Request) -> Response:
        now = self._date(self.now())
        if self.cloud:
            return (
                200,
                {},
                {
                    "baseUrl": self.url,
                    "version": "1001.0.0-SNAPSHOT",
                    "versionNumbers": [1001, 0, 0],
                    "deploymentType": "Cloud",
                    "buildNumber": 100289,
                    "buildDate": "2026-02-23T10:00:00.000+0000",
                    "serverTime": now,
                    "scmInfo": "0a2c4e6f8b1d3f5a7c9e0b2d4f6a8c0e2b4d6f8a",
                    "serverTitle": "Jira",
                },
            )
        return (
            200,
            {},
            {
                "baseUrl": self.url,
                "version": "10.3.4",
                "versionNumbers": [10, 3, 4],
                "deploymentType": "Server",
                "buildNumber": 10030004,
                "buildDate": "2025-02-18T00:00:00.000+0000",
                "serverTime": now,
                "scmInfo": "5c1a7e2f9b3d8e4a6c0f1b2d3e4f5a6b7c8d9e0f",
                "serverTitle": "Jira Sandbox",
            },
        )

    def _get_myself(self, request: Request) -> Response:
        return 200, {}, {**self._user_json(self._me), "locale": "en_US"}

    def _get_fields(self, request: Request) -> Response:
        out = []
        for fid, name, clauses, kind in _SYSTEM_FIELDS:
            schema = {"type": kind, "system": fid}
            if kind == "array":
                schema["items"] = "string" if fid == "labels" else "component"
            out.append(
                {
                    "id": fid,
                    "key": fid,
                    "name": name,
                    "custom": False,
                    "orderable": fid not in ("created", "updated", "creator"),
                    "navigable": True,
                    "searchable": True,
                    "clauseNames": list(clauses),
                    "schema": schema,
                }
            )
        for fid, name, kind, _ in _CUSTOM_FIELDS:
            number = int(fid.rsplit("_", 1)[1])
            out.append(
                {
                    "id": fid,
                    "key": fid,
                    "name": name,
                    "custom": True,
                    "orderable": True,
                    "navigable": True,
                    "searchable": True,
                    "clauseNames": [f"cf[{number}]", name],
                    "schema": {
                        "type": {"select": "option", "number": "number"}.get(kind, "string"),
                        "custom": f"com.atlassian.jira.plugin.system.customfieldtypes:{kind}",
                        "customId": number,
                    },
                }
            )
        return 200, {}, out

    def _get_project(self, request: Request) -> Response:
        wanted = request.params["projectIdOrKey"]
        for project in self._projects.values():
            if wanted in (project["key"], project["id"]):
                return 200, {}, self._project_json(project)
        raise HTTPProblem(404, f"No project could be found with key '{wanted}'.")

    def _find_user(self, ref: str | None, *, by: Sequence[str]) -> str | None:
        if ref is None:
            return None
        for handle, user in self._users.items():
            if any(user.get(attr) == ref for attr in by):
                return handle
        return None

    def _get_user(self, request: Request) -> Response:
        if self.cloud:
            handle = self._find_user(request.arg("accountId"), by=("account_id",))
        else:
            handle = self._find_user(request.arg("username"), by=("name",)) or self._find_user(
                request.arg("key"), by=("key",)
            )
        if handle is None:
            raise HTTPProblem(404, "Specified user does not exist or you do not have required permissions")
        return 200, {}, self._user_json(handle)

    def _matching_users(self, request: Request, *, assignable: bool) -> list[dict[str, Any]]:
        term = (request.arg("query") or request.arg("username") or "").lower()
        if self.cloud and request.arg("accountId"):
            handles = [h for h in [self._find_user(request.arg("accountId"), by=("account_id",))] if h]
        else:
            handles = [
                h
                for h, u in self._users.items()
                if not term or any(term in (u[a] or "").lower() for a in ("display_name", "email", "name"))
            ]
        if assignable:
            handles = [
                h
                for h in handles
                if self._users[h]["account_type"] == "atlassian" and self._users[h]["active"]
            ]
        start = int(request.arg("startAt") or 0)
        count = int(request.arg("maxResults") or 50)
        return [self._user_json(h) for h in handles[start : start + count]]

    def _search_users(self, request: Request) -> Response:
        return 200, {}, self._matching_users(request, assignable=False)

    def _assignable_users(self, request: Request) -> Response:
        if not (request.arg("project") or request.arg("issueKey") or request.arg("issueId")):
            raise HTTPProblem(400, "The 'project', 'issueKey' or 'issueId' parameter is required.")
        return 200, {}, self._matching_users(request, assignable=True)

    # --- handlers: issues ----------------------------------------------------------------------

    def _issue(self, ref: str) -> dict[str, Any]:
        issue_id = ref if ref in self._issues else self._by_key.get(ref.upper())
        if issue_id is None:
            raise HTTPProblem(404, _NOT_FOUND)
        return self._issues[issue_id]

    def _body(self, request: Request) -> Any:
        try:
            return request.json()
        except ValueError as exc:
            raise HTTPProblem(400, f"Unexpected character in the request body: {exc}") from exc

    def _post_issue(self, request: Request) -> Response:
        body = self._body(request) or {}
        issue = self._create(body.get("fields") or {}, body.get("update") or {}, self._me)
        return 201, {}, {"id": issue["id"], "key": issue["key"], "self": self._api(f"issue/{issue['id']}")}

    def _get_issue(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        fields = request.args("fields") if "fields" in request.query else None
        return (
            200,
            {},
            self._issue_json(
                issue, fields=fields, expand=request.args("expand"), properties=request.args("properties")
            ),
        )

    def _put_issue(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        body = self._body(request) or {}
        self._edit(issue, body.get("fields") or {}, body.get("update") or {}, self._me)
        return 204, {}, None

    def _delete_issue(self, request: Request) -> Response:
        self._delete(self._issue(request.params["issueIdOrKey"]), self._me)
        return 204, {}, None

    def _put_assignee(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        body = self._body(request)
        if not isinstance(body, dict):
            raise HTTPProblem(400, "", errors={"assignee": _id_hint(self.cloud)})
        self._assign(issue, self._user_in_body(body, "assignee"), self._me)
        return 204, {}, None

    def _api_user_ref(self, ref: Any, field: str) -> str | None:
        if ref is None or ref == "-1":
            return None
        by = ("account_id",) if self.cloud else ("name", "key")
        handle = self._find_user(str(ref), by=by)
        if handle is None:
            raise HTTPProblem(400, "", errors={field: f"User '{ref}' does not exist."})
        return handle

    # --- handlers: comments --------------------------------------------------------------------

    def _get_comments(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        comments = list(issue["comments"])
        if (request.arg("orderBy") or "").startswith("-"):
            comments.reverse()
        start = int(request.arg("startAt") or 0)
        count = int(request.arg("maxResults") or 5000)
        props = "properties" in request.args("expand")
        page = [self._comment_json(issue, c, properties=props) for c in comments[start : start + count]]
        return 200, {}, {"startAt": start, "maxResults": count, "total": len(comments), "comments": page}

    def _comment(self, issue: dict[str, Any], comment_id: str) -> dict[str, Any]:
        for comment in issue["comments"]:
            if comment["id"] == comment_id:
                return comment
        raise HTTPProblem(404, f"Can not find a comment for the id: {comment_id}.")

    def _get_comment(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        comment = self._comment(issue, request.params["id"])
        return 200, {}, self._comment_json(issue, comment, properties="properties" in request.args("expand"))

    def _post_comment(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        body = self._body(request) or {}
        comment = self._comment_on(issue, body, self._me)
        return 201, {}, self._comment_json(issue, comment, properties=bool(comment["properties"]))

    def _put_comment(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        comment = self._comment(issue, request.params["id"])
        body = self._body(request) or {}
        self._edit_comment(issue, comment, body, self._me)
        return 200, {}, self._comment_json(issue, comment, properties=bool(comment["properties"]))

    def _delete_comment(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        self._remove_comment(issue, self._comment(issue, request.params["id"]), self._me)
        return 204, {}, None

    # --- handlers: transitions, watchers, notify, properties -----------------------------------

    def _transitions_for(self, issue: dict[str, Any]) -> list[tuple[str, str, str]]:
        status = _status_name(issue["status"])
        return [(tid, name, to) for tid, name, sources, to in _TRANSITIONS if status in sources]

    def _get_transitions(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        wanted = request.arg("transitionId")
        out = [
            {
                "id": tid,
                "name": name,
                "to": self._status_json(_status_id(to)),
                "hasScreen": False,
                "isGlobal": False,
                "isInitial": False,
                "isAvailable": True,
                "isConditional": False,
                "isLooped": False,
            }
            for tid, name, to in self._transitions_for(issue)
            if wanted is None or wanted == tid
        ]
        return 200, {}, {"expand": "transitions", "transitions": out}

    def _post_transition(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        body = self._body(request) or {}
        tid = str((body.get("transition") or {}).get("id", ""))
        self._transition(
            issue, tid, self._me, fields=body.get("fields") or {}, update=body.get("update") or {}
        )
        return 204, {}, None

    def _get_watchers(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        return (
            200,
            {},
            {
                "self": self._api(f"issue/{issue['key']}/watchers"),
                "isWatching": self._me in issue["watchers"],
                "watchCount": len(issue["watchers"]),
                "watchers": [self._user_json(h) for h in issue["watchers"]],
            },
        )

    def _post_watcher(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        ref = self._body(request)
        # The body is a bare JSON string: an accountId on Cloud, a username on Data Center.
        if ref is not None and not isinstance(ref, str):
            raise HTTPProblem(400, "The watcher must be given as a JSON string: " + _id_hint(self.cloud))
        handle = self._me if ref is None else self._api_user_ref(ref, "watcher")
        if handle is None:
            raise HTTPProblem(400, _id_hint(self.cloud))
        if handle not in issue["watchers"]:
            issue["watchers"].append(handle)
        return 204, {}, None

    def _delete_watcher(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        ref = request.arg("accountId") if self.cloud else request.arg("username")
        handle = self._api_user_ref(ref, "watcher")
        if handle in issue["watchers"]:
            issue["watchers"].remove(handle)
        return 204, {}, None

    def _post_notify(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        self._notifications.append({"issue": issue["key"], **(self._body(request) or {})})
        return 204, {}, None

    def _get_property_keys(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        keys = [
            {"self": self._api(f"issue/{issue['id']}/properties/{k}"), "key": k} for k in issue["properties"]
        ]
        return 200, {}, {"keys": keys}

    def _get_property(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        key = request.params["propertyKey"]
        if key not in issue["properties"]:
            raise HTTPProblem(404, f"The property with key '{key}' does not exist.")
        return 200, {}, {"key": key, "value": issue["properties"][key]}

    def _put_property(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        key = request.params["propertyKey"]
        existed = key in issue["properties"]
        issue["properties"][key] = self._body(request)
        return (200 if existed else 201), {}, None

    def _delete_property(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        key = request.params["propertyKey"]
        if issue["properties"].pop(key, _UNSET) is _UNSET:
            raise HTTPProblem(404, f"The property with key '{key}' does not exist.")
        return 204, {}, None

    def _get_changelog(self, request: Request) -> Response:
        issue = self._issue(request.params["issueIdOrKey"])
        start = int(request.arg("startAt") or 0)
        count = int(request.arg("maxResults") or 100)
        values = [self._history_json(h) for h in issue["histories"]]
        return (
            200,
            {},
            {
                "self": self._api(f"issue/{issue['key']}/changelog?maxResults={count}&startAt={start}"),
                "maxResults": count,
                "startAt": start,
                "total": len(values),
                "isLast": start + count >= len(values),
                "values": values[start : start + count],
            },
        )

    # --- handlers: search ----------------------------------------------------------------------

    def _search_params(self, request: Request) -> dict[str, Any]:
        if request.method == "POST":
            body = self._body(request) or {}
            if not isinstance(body, dict):
                raise HTTPProblem(400, "The search request must be a JSON object.")
            return body
        params: dict[str, Any] = {k: request.arg(k) for k in request.query}
        for key in ("fields", "expand", "properties"):
            if key in request.query:
                params[key] = request.args(key)
        return params

    def _search_offset(self, request: Request) -> Response:
        params = self._search_params(request)
        found = self._search(params.get("jql") or "", bounded=False)
        start = int(params.get("startAt") or 0)
        count = min(int(params.get("maxResults") or 50), 1000)
        fields = _as_list(params.get("fields")) or ["*navigable"]
        expand = _as_list(params.get("expand"))
        page = [self._issue_json(i, fields=fields, expand=expand) for i in found[start : start + count]]
        return (
            200,
            {},
            {
                "expand": "schema,names",
                "startAt": start,
                "maxResults": count,
                "total": len(found),
                "issues": page,
            },
        )

    def _search_jql(self, request: Request) -> Response:
        params = self._search_params(request)
        jql = params.get("jql") or ""
        found = self._search(jql, bounded=True)
        start = _read_page_token(params.get("nextPageToken"), jql)
        fields = _as_list(params.get("fields"))
        count = min(int(params.get("maxResults") or 50), 5000 if not fields or fields == ["id"] else 100)
        expand = _as_list(params.get("expand"))
        page = found[start : start + count]
        if fields and fields != ["id"]:
            issues = [self._issue_json(i, fields=fields, expand=expand) for i in page]
        else:
            # Without fields, Cloud's new search answers ids only.
            issues = [
                {"id": i["id"]}
                | (
                    {"changelog": self._issue_json(i, fields=[], expand=expand)["changelog"]}
                    if "changelog" in expand
                    else {}
                )
                for i in page
            ]
        out: dict[str, Any] = {"issues": issues, "isLast": start + count >= len(found)}
        if not out["isLast"]:
            out["nextPageToken"] = _page_token(start + count, jql)
        return 200, {}, out

    def _search_removed(self, request: Request) -> Response:
        raise HTTPProblem(
            410,
            "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
            "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046",
        )

    def _search(self, jql: str, *, bounded: bool) -> list[dict[str, Any]]:
        query = _parse_jql(jql)
        if bounded and not query.clauses:
            raise HTTPProblem(
                400,
                "Unbounded JQL queries are not allowed here. Please add a search restriction to your query.",
            )
        zone = ZoneInfo(self._users[self._me]["time_zone"])
        found = [i for i in self._issues.values() if all(self._matches(i, c, zone) for c in query.clauses)]
        for field, descending in reversed(query.order or [("key", True)]):
            found.sort(key=lambda i, f=field: _sort_key(i, f), reverse=descending)
        return found

    def _matches(self, issue: dict[str, Any], clause: tuple[str, str, Any], zone: ZoneInfo) -> bool:
        field, op, value = clause
        if field in ("created", "updated"):
            moment = issue[field]
            limit = self._jql_date(value, zone, field)
            return {
                ">=": moment >= limit,
                ">": moment > limit,
                "<=": moment <= limit,
                "<": moment < limit,
                "=": moment == limit,
                "!=": moment != limit,
            }[op]
        actual = self._jql_values(issue, field)
        if op in ("is", "is not"):
            return not actual if op == "is" else bool(actual)
        wanted = {v.lower() for v in (value if isinstance(value, list) else [value])}
        hit = bool(actual & wanted)
        return hit if op in ("=", "in") else not hit

    def _jql_values(self, issue: dict[str, Any], field: str) -> set[str]:
        if field == "project":
            project = self._projects[issue["project"]]
            return {project["key"].lower(), project["id"]}
        if field in ("key", "issuekey", "id", "issue"):
            return {issue["key"].lower(), issue["id"]}
        if field == "status":
            return {_status_name(issue["status"]).lower(), issue["status"]}
        if field == "labels":
            return {label.lower() for label in issue["labels"]}
        if field in ("assignee", "reporter"):
            handle = issue[field]
            if handle is None:
                return set()
            user = self._users[handle]
            refs = {self._user_ref(handle).lower()}
            if handle == self._me:
                refs.add("currentuser()")
            return refs | {user["email"].lower()} if user["email"] else refs
        if field == "resolution":
            return {"done"} if issue["resolution"] else set()
        raise HTTPProblem(400, f"The Jira sandbox cannot search on the field '{field}'. {_JQL_HELP}")

    def _jql_date(self, value: str, zone: ZoneInfo, field: str) -> datetime:
        relative = re.fullmatch(r"([+-]?)(\d+)([mhdw])", value.strip())
        if relative:
            sign, amount, unit = relative.groups()
            delta = timedelta(
                **{{"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: int(amount)}
            )
            return self.now() - delta if sign != "+" else self.now() + delta
        # Jira reads JQL dates in the searching user's time zone.
        for pattern in ("%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M", "%Y/%m/%d", "%Y-%m-%d"):
            try:
                return datetime.strptime(value.strip(), pattern).replace(tzinfo=zone)
            except ValueError:
                continue
        raise HTTPProblem(
            400,
            f"Date value '{value}' for field '{field}' is invalid. Valid formats include: "
            "'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', "
            "or a period format e.g. '-5d', '4w 2d'.",
        )

    # --- operations: shared by the API and the helpers -----------------------------------------

    def _create(self, fields: Mapping[str, Any], update: Mapping[str, Any], actor: str) -> dict[str, Any]:
        errors: dict[str, str] = {}
        project = self._resolve_project(fields.get("project"))
        if project is None:
            errors["project"] = "Specify a valid project ID or key"
        if not fields.get("summary"):
            errors["summary"] = "You must specify a summary of the issue."
        type_id = _lookup(_ISSUE_TYPES, fields.get("issuetype"))
        if type_id is None:
            errors["issuetype"] = "Specify an issue type"
        if errors:
            raise HTTPProblem(400, "", errors=errors)
        assert project is not None and type_id is not None
        now = self.now()
        project["counter"] += 1
        issue: dict[str, Any] = {
            "id": self._next("issue"),
            "key": f"{project['key']}-{project['counter']}",
            "project": project["key"],
            "summary": None,
            "description": None,
            "issuetype": type_id,
            "priority": "3",
            "status": "10000",
            "resolution": None,
            "resolutiondate": None,
            "labels": [],
            "components": [],
            "assignee": None,
            "reporter": None,
            "creator": actor,
            "created": now,
            "updated": now,
            "status_changed": now,
            "custom": {},
            "comments": [],
            "histories": [],
            "watchers": [actor] if self._users[actor]["account_type"] == "atlassian" else [],
            "properties": {},
        }
        rest = {k: v for k, v in fields.items() if k not in ("project", "issuetype")}
        items, comments = self._change(issue, rest, update, actor)
        if "reporter" not in rest:
            items += self._set_user(issue, "reporter", actor)
        self._issues[issue["id"]] = issue
        self._by_key[issue["key"]] = issue["id"]
        status = self._status_json(issue["status"])
        items.append(_item("status", "10000", None, status["name"], None, display="Status"))
        self._issue_webhook("jira:issue_created", "issue_created", issue, actor, items=items, record=False)
        for comment in comments:
            self._comment_webhooks(issue, comment, actor, created=True, issue_event=False)
        return issue

    def _edit(
        self, issue: dict[str, Any], fields: Mapping[str, Any], update: Mapping[str, Any], actor: str
    ) -> None:
        both = sorted(set(fields) & set(update))
        if both:
            raise HTTPProblem(
                400, "", errors={f: f"Field '{f}' cannot be set in both 'fields' and 'update'." for f in both}
            )
        items, comments = self._change(issue, fields, update, actor)
        if not items and not comments:
            return
        issue["updated"] = self.now()
        for comment in comments:
            self._comment_webhooks(issue, comment, actor, created=True, issue_event=not items)
        if items:
            event = "issue_assigned" if all(i["fieldId"] == "assignee" for i in items) else "issue_updated"
            self._issue_webhook(
                "jira:issue_updated",
                event,
                issue,
                actor,
                items=items,
                comment=comments[-1] if comments else None,
            )

    def _assign(self, issue: dict[str, Any], handle: str | None, actor: str) -> None:
        items = self._set_user(issue, "assignee", handle)
        issue["updated"] = self.now()
        # Assigning to the same person again still fires issue_assigned, with no items.
        self._issue_webhook("jira:issue_updated", "issue_assigned", issue, actor, items=items)

    def _comment_on(self, issue: dict[str, Any], body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        comment = self._new_comment(issue, body, actor)
        issue["updated"] = comment["created"]
        self._comment_webhooks(issue, comment, actor, created=True, issue_event=True)
        return comment

    def _new_comment(self, issue: dict[str, Any], body: Mapping[str, Any], actor: str) -> dict[str, Any]:
        text = body.get("body")
        if not isinstance(text, str) or not text.strip():
            raise HTTPProblem(400, "", errors={"comment": "Comment body can not be empty!"})
        properties = body.get("properties") or []
        if not isinstance(properties, list) or not all(
            isinstance(p, dict) and "key" in p for p in properties
        ):
            raise HTTPProblem(
                400, "", errors={"properties": "Properties are a list of {key, value} objects."}
            )
        now = self.now()
        comment = {
            "id": self._next("comment"),
            "author": actor,
            "update_author": actor,
            "body": text,
            "created": now,
            "updated": now,
            "properties": [dict(p) for p in properties],
            "visibility": body.get("visibility"),
        }
        issue["comments"].append(comment)
        return comment

    def _edit_comment(
        self, issue: dict[str, Any], comment: dict[str, Any], body: Mapping[str, Any], actor: str
    ) -> None:
        if "body" in body:
            text = body["body"]
            if not isinstance(text, str) or not text.strip():
                raise HTTPProblem(400, "", errors={"comment": "Comment body can not be empty!"})
            comment["body"] = text
        if "visibility" in body:
            comment["visibility"] = body["visibility"]
        for prop in body.get("properties") or []:
            comment["properties"] = [p for p in comment["properties"] if p["key"] != prop["key"]] + [
                dict(prop)
            ]
        comment["update_author"] = actor
        comment["updated"] = issue["updated"] = self.now()
        self._comment_webhooks(issue, comment, actor, created=False, issue_event=True)

    def _remove_comment(self, issue: dict[str, Any], comment: dict[str, Any], actor: str) -> None:
        issue["comments"].remove(comment)
        issue["updated"] = self.now()
        payload = self._comment_payload("comment_deleted", issue, comment, actor)
        self._send(payload)
        self._issue_webhook("jira:issue_updated", "issue_comment_deleted", issue, actor, comment=comment)

    def _transition(
        self,
        issue: dict[str, Any],
        transition_id: str,
        actor: str,
        *,
        fields: Mapping[str, Any],
        update: Mapping[str, Any],
    ) -> None:
        allowed = {tid: to for tid, _, to in self._transitions_for(issue)}
        if transition_id not in allowed:
            raise HTTPProblem(400, f"Transition id '{transition_id}' is not valid for this issue.")
        before = issue["status"]
        after = _status_id(allowed[transition_id])
        items: list[dict[str, Any]] = []
        done_before, done_after = _category(before) == 3, _category(after) == 3
        now = self.now()
        if done_after and not issue["resolution"]:
            issue["resolution"], issue["resolutiondate"] = _RESOLUTION["id"], now
            items.append(_item("resolution", None, None, _RESOLUTION["id"], _RESOLUTION["name"]))
        elif done_before and not done_after and issue["resolution"]:
            issue["resolution"], issue["resolutiondate"] = None, None
            items.append(_item("resolution", _RESOLUTION["id"], _RESOLUTION["name"], None, None))
        issue["status"] = after
        if _category(before) != _category(after):
            issue["status_changed"] = now
        items.append(_item("status", before, _status_name(before), after, _status_name(after)))
        rest = {k: v for k, v in fields.items() if k != "resolution"}
        more, comments = self._change(issue, rest, update, actor)
        items += more
        issue["updated"] = now
        for comment in comments:
            self._comment_webhooks(issue, comment, actor, created=True, issue_event=False)
        self._issue_webhook(
            "jira:issue_updated",
            "issue_generic",
            issue,
            actor,
            items=items,
            comment=comments[-1] if comments else None,
        )

    def _delete(self, issue: dict[str, Any], actor: str) -> None:
        del self._issues[issue["id"]]
        del self._by_key[issue["key"]]
        self._send(
            {
                "timestamp": _millis(self.now()),
                "webhookEvent": "jira:issue_deleted",
                "user": self._user_json(actor),
                "issue": self._webhook_issue(issue),
            }
        )

    # --- field changes -------------------------------------------------------------------------

    def _change(
        self, issue: dict[str, Any], fields: Mapping[str, Any], update: Mapping[str, Any], actor: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Apply ``fields`` (set) and ``update`` (verbs); the changelog items and comments added."""
        if not isinstance(fields, Mapping) or not isinstance(update, Mapping):
            raise HTTPProblem(400, "'fields' and 'update' must be JSON objects.")
        errors: dict[str, str] = {}
        plans: list[tuple[str, Any]] = []
        new_comments: list[Mapping[str, Any]] = []
        for field, value in fields.items():
            plans.append((field, ("set", value)))
        for field, operations in update.items():
            if not isinstance(operations, list):
                errors[field] = "Operations are a list of {verb: value} objects."
                continue
            for operation in operations:
                if not isinstance(operation, dict) or len(operation) != 1:
                    errors[field] = "Each operation is one {verb: value} object."
                    continue
                ((verb, value),) = operation.items()
                if field == "comment":
                    if verb != "add":
                        errors[field] = f"The sandbox supports only 'add' for comments, not '{verb}'."
                    else:
                        new_comments.append(value or {})
                    continue
                plans.append((field, (verb, value)))
        # Validate everything before changing anything, as Jira does.
        for field, (verb, value) in plans:
            try:
                self._check(issue, field, verb, value)
            except HTTPProblem as problem:
                errors.update(problem.errors or {field: problem.message})
        if errors:
            raise HTTPProblem(400, "", errors=errors)
        items: list[dict[str, Any]] = []
        before_labels, before_components = list(issue["labels"]), list(issue["components"])
        for field, (verb, value) in plans:
            items += self._apply(issue, field, verb, value)
        if issue["labels"] != before_labels:
            items.append(_item("labels", None, " ".join(before_labels), None, " ".join(issue["labels"])))
        if issue["components"] != before_components:
            names = {c["id"]: c["name"] for c in self._projects[issue["project"]]["components"]}
            for removed in [c for c in before_components if c not in issue["components"]]:
                items.append(_item("components", removed, names[removed], None, None))
            for added in [c for c in issue["components"] if c not in before_components]:
                items.append(_item("components", None, None, added, names[added]))
        comments = [self._new_comment(issue, c, actor) for c in new_comments]
        return items, comments

    def _check(self, issue: dict[str, Any], field: str, verb: str, value: Any) -> None:
        if field in ("labels", "components"):
            if verb not in ("add", "remove", "set"):
                raise HTTPProblem(
                    400, "", errors={field: f"Operation '{verb}' is not supported for {field}."}
                )
            values = value if verb == "set" else [value]
            if not isinstance(values, list):
                raise HTTPProblem(400, "", errors={field: f"'set' for {field} takes a list."})
            for one in values:
                if field == "labels":
                    if not isinstance(one, str) or not one or " " in one:
                        raise HTTPProblem(
                            400, "", errors={"labels": f"The label '{one}' contains spaces or is empty."}
                        )
                elif self._component_id(issue, one) is None:
                    raise HTTPProblem(
                        400, "", errors={"components": f"Component name '{_name_of(one)}' is not valid"}
                    )
            return
        if verb != "set":
            raise HTTPProblem(
                400, "", errors={field: f"Operation '{verb}' is not supported for {field}; use 'set'."}
            )
        if field in ("summary", "description"):
            if field == "summary" and (not isinstance(value, str) or not value.strip()):
                raise HTTPProblem(400, "", errors={"summary": "You must specify a summary of the issue."})
            if value is not None and not isinstance(value, str):
                raise HTTPProblem(
                    400, "", errors={field: f"Field '{field}' takes a string (wiki markup) in REST v2."}
                )
        elif field == "priority":
            if _lookup(_PRIORITIES, value) is None:
                raise HTTPProblem(
                    400, "", errors={"priority": f"Priority name '{_name_of(value)}' is not valid"}
                )
        elif field == "issuetype":
            if _lookup(_ISSUE_TYPES, value) is None:
                raise HTTPProblem(400, "", errors={"issuetype": "The issue type selected is invalid."})
        elif field in ("assignee", "reporter"):
            self._user_in_body(value, field)
        elif field.startswith("customfield_"):
            if _custom(field) is None:
                raise HTTPProblem(
                    400,
                    "",
                    errors={
                        field: f"Field '{field}' cannot be set. "
                        "It is not on the appropriate screen, or unknown."
                    },
                )
            self._custom_value(field, value)
        else:
            raise HTTPProblem(
                400,
                "",
                errors={
                    field: f"Field '{field}' cannot be set. It is not on the appropriate screen, or unknown."
                },
            )

    def _user_in_body(self, value: Any, field: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise HTTPProblem(400, "", errors={field: _id_hint(self.cloud)})
        # Cloud removed usernames from its API (GDPR): an assignee is an accountId there.
        names = ("accountId",) if self.cloud else ("name", "key")
        given = [n for n in names if n in value]
        if not given:
            raise HTTPProblem(400, "", errors={field: _id_hint(self.cloud)})
        ref = value[given[0]]
        if ref is None or ref == "-1":
            return None
        if not self.cloud and given[0] == "key":
            handle = self._find_user(str(ref), by=("key",))
            if handle is None:
                raise HTTPProblem(400, "", errors={field: f"User '{ref}' does not exist."})
            return handle
        return self._api_user_ref(ref, field)

    def _custom_value(self, field: str, value: Any) -> Any:
        kind = _custom(field)[2]
        if value is None:
            return None
        if kind == "select":
            options = self._options[field]
            if isinstance(value, dict) and value.get("value") in options:
                return options[value["value"]]
            if isinstance(value, dict) and value.get("id") in options.values():
                return value["id"]
            raise HTTPProblem(400, "", errors={field: f"Option value '{_name_of(value)}' is not valid"})
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise HTTPProblem(400, "", errors={field: "Operation value must be a number"})
            return float(value)
        if not isinstance(value, str):
            raise HTTPProblem(400, "", errors={field: "Operation value must be a string"})
        return value

    def _component_id(self, issue: dict[str, Any], value: Any) -> str | None:
        if not isinstance(value, dict):
            return None
        for component in self._projects[issue["project"]]["components"]:
            if value.get("id") == component["id"] or value.get("name") == component["name"]:
                return component["id"]
        return None

    def _apply(self, issue: dict[str, Any], field: str, verb: str, value: Any) -> list[dict[str, Any]]:
        if field == "labels":
            if verb == "set":
                issue["labels"] = list(dict.fromkeys(value))
            elif verb == "add" and value not in issue["labels"]:
                issue["labels"].append(value)
            elif verb == "remove" and value in issue["labels"]:
                issue["labels"].remove(value)
            return []
        if field == "components":
            if verb == "set":
                issue["components"] = list(dict.fromkeys(self._component_id(issue, v) for v in value))
            else:
                cid = self._component_id(issue, value)
                if verb == "add" and cid not in issue["components"]:
                    issue["components"].append(cid)
                elif verb == "remove" and cid in issue["components"]:
                    issue["components"].remove(cid)
            return []
        if field in ("summary", "description"):
            old = issue[field]
            issue[field] = value
            return [] if old == value else [_item(field, None, old, None, value)]
        if field == "priority":
            old, new = issue["priority"], _lookup(_PRIORITIES, value)
            issue["priority"] = new
            return (
                [] if old == new else [_item("priority", old, _priority_name(old), new, _priority_name(new))]
            )
        if field == "issuetype":
            old, new = issue["issuetype"], _lookup(_ISSUE_TYPES, value)
            issue["issuetype"] = new
            names = {t[0]: t[1] for t in _ISSUE_TYPES}
            return [] if old == new else [_item("issuetype", old, names[old], new, names[new])]
        if field in ("assignee", "reporter"):
            items = self._set_user(issue, field, self._user_in_body(value, field))
            return items
        old, new = issue["custom"].get(field), self._custom_value(field, value)
        if old == new:
            return []
        issue["custom"][field] = new
        _, name, kind, _ = _custom(field)
        if kind == "select":
            return [
                _item(
                    field,
                    old,
                    old and self._option_value(field, old),
                    new,
                    new and self._option_value(field, new),
                    display=name,
                    fieldtype="custom",
                )
            ]
        return [_item(field, None, _text(old), None, _text(new), display=name, fieldtype="custom")]

    def _set_user(self, issue: dict[str, Any], field: str, handle: str | None) -> list[dict[str, Any]]:
        old = issue[field]
        issue[field] = handle
        if old == handle:
            return []

        def ref(h: str | None) -> str | None:
            return None if h is None else self._user_ref(h)

        def name(h: str | None) -> str | None:
            return None if h is None else self._users[h]["display_name"]

        return [_item(field, ref(old), name(old), ref(handle), name(handle))]

    def _resolve_project(self, value: Any) -> dict[str, Any] | None:
        if isinstance(value, str):
            value = {"key": value}
        if not isinstance(value, dict):
            return None
        for project in self._projects.values():
            if value.get("key") == project["key"] or str(value.get("id")) == project["id"]:
                return project
        return None

    # --- webhooks ------------------------------------------------------------------------------

    def _send(self, payload: dict[str, Any]) -> None:
        identifier = str(uuid.uuid4())
        headers = {
            "X-Atlassian-Webhook-Identifier": identifier,
            "User-Agent": "Atlassian Webhook HTTP Client",
        }
        self.send_webhook(payload["webhookEvent"], payload, headers, delivery_id=identifier)

    def _issue_webhook(
        self,
        webhook_event: str,
        event_type: str,
        issue: dict[str, Any],
        actor: str,
        *,
        items: list[dict[str, Any]] | None = None,
        comment: dict[str, Any] | None = None,
        record: bool = True,
    ) -> None:
        now = self.now()
        payload: dict[str, Any] = {
            "timestamp": _millis(now),
            "webhookEvent": webhook_event,
            "issue_event_type_name": event_type,
            "user": self._user_json(actor),
            "issue": self._webhook_issue(issue),
        }
        if items is not None:
            history_id = self._next("history")
            if record and items:
                # The same id comes back in the issue's changelog (expand=changelog).
                issue["histories"].append({"id": history_id, "author": actor, "created": now, "items": items})
            payload["changelog"] = {"id": history_id, "items": [self._item_json(i) for i in items]}
        if comment is not None:
            payload["comment"] = self._comment_json(issue, comment)
        self._send(payload)

    def _comment_payload(
        self, event: str, issue: dict[str, Any], comment: dict[str, Any], actor: str
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "timestamp": _millis(self.now()),
            "webhookEvent": event,
            "comment": self._comment_json(issue, comment),
        }
        if self.cloud:
            fields = self._all_fields(issue)
            payload["issue"] = {
                "id": issue["id"],
                "self": self._api(f"issue/{issue['id']}"),
                "key": issue["key"],
                "fields": {
                    k: fields[k]
                    for k in ("summary", "issuetype", "project", "assignee", "priority", "status")
                },
            }
        elif event != "comment_created":
            # Data Center names the actor on comment edits and deletions, never on creation.
            payload["user"] = self._user_json(actor)
        return payload

    def _comment_webhooks(
        self, issue: dict[str, Any], comment: dict[str, Any], actor: str, *, created: bool, issue_event: bool
    ) -> None:
        event = "comment_created" if created else "comment_updated"
        self._send(self._comment_payload(event, issue, comment, actor))
        if issue_event:
            self._issue_webhook(
                "jira:issue_updated",
                "issue_commented" if created else "issue_comment_edited",
                issue,
                actor,
                comment=comment,
            )

    # --- helpers: a person acting through Jira's UI -------------------------------------------

    def _actor(self, as_user: str | None) -> str:
        if as_user is None:
            return "mia" if "mia" in self._users else self._me
        handle = self._find_user(as_user, by=("handle", "account_id", "name", "key", "email"))
        if handle is None:
            raise KeyError(f"no user '{as_user}' in the Jira sandbox")
        return handle

    def _ref_body(self, user: str | None) -> dict[str, Any] | None:
        if user is None:
            return {"accountId": None} if self.cloud else {"name": None}
        handle = self._actor(user)
        return (
            {"accountId": self._users[handle]["account_id"]}
            if self.cloud
            else {"name": self._users[handle]["name"]}
        )

    @property
    def service_account(self) -> str:
        """Escalier's own user as this flavour names it (accountId on Cloud, username on Data Center)."""
        return self._user_ref(self._me)

    def user(self, ref: str) -> dict[str, Any]:
        """A user (by handle, accountId, username or email) as this flavour's API shows it."""
        with self.lock:
            return self._user_json(self._actor(ref))

    def create_issue(
        self,
        project: str,
        summary: str,
        *,
        description: str | None = None,
        issuetype: str = "Task",
        priority: str | None = "Medium",
        labels: Sequence[str] = (),
        components: Sequence[str] = (),
        assignee: str | None = None,
        reporter: str | None = None,
        fields: Mapping[str, Any] | None = None,
        as_user: str | None = None,
    ) -> dict[str, Any]:
        """Create an issue as a person would (webhooks included); returns it as GET shows it.

        ``fields`` adds REST-shaped values, e.g. ``{"customfield_10050": {"value": "critical"}}``;
        ``reporter`` defaults to ``as_user``.
        """
        with self.lock:
            actor = self._actor(as_user or reporter)
            body: dict[str, Any] = {
                "project": {"key": project},
                "summary": summary,
                "issuetype": {"name": issuetype},
            }
            if description is not None:
                body["description"] = description
            if priority is not None:
                body["priority"] = {"name": priority}
            if labels:
                body["labels"] = list(labels)
            if components:
                body["components"] = [{"name": c} for c in components]
            if assignee is not None:
                body["assignee"] = self._ref_body(assignee)
            if reporter is not None:
                body["reporter"] = self._ref_body(reporter)
            body.update(fields or {})
            issue = self._create(body, {}, actor)
            return self._issue_json(issue, expand=["changelog"])

    def update_issue(
        self,
        key: str,
        *,
        summary: str | None = None,
        description: str | None = None,
        priority: str | None = None,
        assignee: str | None = _UNSET,
        labels: Sequence[str] | None = None,
        components: Sequence[str] | None = None,
        fields: Mapping[str, Any] | None = None,
        update: Mapping[str, Any] | None = None,
        as_user: str | None = None,
    ) -> dict[str, Any]:
        """Edit an issue as a person would (``assignee=None`` unassigns); returns it as GET shows it."""
        with self.lock:
            issue = self._issue(key)
            body: dict[str, Any] = {}
            for name, value in (("summary", summary), ("description", description)):
                if value is not None:
                    body[name] = value
            if priority is not None:
                body["priority"] = {"name": priority}
            if assignee is not _UNSET:
                body["assignee"] = self._ref_body(assignee)
            if labels is not None:
                body["labels"] = list(labels)
            if components is not None:
                body["components"] = [{"name": c} for c in components]
            body.update(fields or {})
            self._edit(issue, body, update or {}, self._actor(as_user))
            return self._issue_json(issue, expand=["changelog"])

    def assign(self, key: str, user: str | None, *, as_user: str | None = None) -> dict[str, Any]:
        """Assign (``None``: unassign) as a person would; returns the issue."""
        with self.lock:
            issue = self._issue(key)
            self._assign(issue, None if user is None else self._actor(user), self._actor(as_user))
            return self._issue_json(issue, expand=["changelog"])

    def add_comment(
        self, key: str, body: str, *, as_user: str | None = None, internal: bool = False
    ) -> dict[str, Any]:
        """Comment as a person would (``internal``: a Service Management internal note)."""
        with self.lock:
            issue = self._issue(key)
            request: dict[str, Any] = {"body": body}
            if internal:
                request["properties"] = [{"key": "sd.public.comment", "value": {"internal": True}}]
            comment = self._comment_on(issue, request, self._actor(as_user))
            return self._comment_json(issue, comment, properties=True)

    def edit_comment(
        self, key: str, comment_id: str, body: str, *, as_user: str | None = None
    ) -> dict[str, Any]:
        """Edit a comment's text as a person would."""
        with self.lock:
            issue = self._issue(key)
            comment = self._comment(issue, str(comment_id))
            self._edit_comment(issue, comment, {"body": body}, self._actor(as_user))
            return self._comment_json(issue, comment, properties=True)

    def transition(self, key: str, name: str, *, as_user: str | None = None) -> dict[str, Any]:
        """Move an issue by transition name (or target status name) as a person would."""
        with self.lock:
            issue = self._issue(key)
            options = self._transitions_for(issue)
            found = [tid for tid, tname, to in options if name.lower() in (tname.lower(), to.lower())]
            if not found:
                raise HTTPProblem(
                    400,
                    f"No transition '{name}' from {_status_name(issue['status'])}: "
                    f"{', '.join(t[1] for t in options)}",
                )
            self._transition(issue, found[0], self._actor(as_user), fields={}, update={})
            return self._issue_json(issue, expand=["changelog"])

    def delete_issue(self, key: str, *, as_user: str | None = None) -> None:
        """Delete an issue as a person would."""
        with self.lock:
            self._delete(self._issue(key), self._actor(as_user))

    def issue(self, key: str) -> dict[str, Any]:
        """The issue as ``GET /rest/api/2/issue/{key}?expand=changelog`` shows it."""
        with self.lock:
            return self._issue_json(self._issue(key), expand=["changelog"], properties=["*all"])

    def comments(self, key: str) -> list[dict[str, Any]]:
        """The issue's comments, oldest first, with their properties."""
        with self.lock:
            issue = self._issue(key)
            return [self._comment_json(issue, c, properties=True) for c in issue["comments"]]

    def watchers(self, key: str) -> list[str]:
        """The issue's watchers as this flavour names them."""
        with self.lock:
            return [self._user_ref(h) for h in self._issue(key)["watchers"]]

    def notifications(self) -> list[dict[str, Any]]:
        """The notification requests received (``POST .../notify`` bodies with the issue key)."""
        with self.lock:
            return list(self._notifications)


# --- JQL -------------------------------------------------------------------------------------

_JQL_HELP = (
    "The sandbox supports: project, key, status, labels, assignee, reporter, resolution "
    "(=, !=, in, not in, is EMPTY), created and updated (>=, >, <=, <, =), joined with AND, "
    "parentheses, and ORDER BY updated, created or key."
)
_JQL_TOKEN = re.compile(
    r'\s*(?:"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|([A-Za-z]\w*\(\s*\))|(>=|<=|!=|!~|[=<>~(),])|([^\s=<>!~(),"\']+))'
)
_JQL_FIELDS = {
    "project",
    "key",
    "issuekey",
    "id",
    "issue",
    "status",
    "labels",
    "assignee",
    "reporter",
    "resolution",
    "created",
    "updated",
    "createddate",
    "updateddate",
}


class _Query:
    def __init__(self) -> None:
        self.clauses: list[tuple[str, str, Any]] = []
        self.order: list[tuple[str, bool]] = []


def _tokens(jql: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position = 0
    text = jql.rstrip()
    while position < len(text):
        match = _JQL_TOKEN.match(text, position)
        if not match or match.end() == position:
            raise HTTPProblem(
                400,
                f"Error in the JQL Query: the character '{text[position]}' "
                f"at position {position} is unexpected.",
            )
        quoted = match.group(1) if match.group(1) is not None else match.group(2)
        if quoted is not None:
            out.append(("str", re.sub(r"\\(.)", r"\1", quoted)))
        elif match.group(3):
            out.append(("word", re.sub(r"\s+", "", match.group(3))))  # a function: currentUser()
        elif match.group(4):
            out.append(("op", match.group(4)))
        else:
            out.append(("word", match.group(5)))
        position = match.end()
    return out


def _parse_jql(jql: str) -> _Query:
    tokens = _tokens(jql)
    query = _Query()
    words = [t[1].lower() if t[0] == "word" else None for t in tokens]
    split = next(
        (i for i in range(len(tokens) - 1) if words[i] == "order" and words[i + 1] == "by"), len(tokens)
    )
    _parse_clauses(tokens[:split], query, jql)
    rest = tokens[split + 2 :]
    while rest:
        field = rest.pop(0)[1].lower()
        if field not in ("updated", "created", "key", "issuekey", "id"):
            raise HTTPProblem(400, f"The Jira sandbox cannot order by '{field}'. {_JQL_HELP}")
        descending = False
        if rest and rest[0][0] == "word" and rest[0][1].lower() in ("asc", "desc"):
            descending = rest.pop(0)[1].lower() == "desc"
        query.order.append(({"issuekey": "key", "id": "key"}.get(field, field), descending))
        if rest and rest[0] == ("op", ","):
            rest.pop(0)
    return query


def _parse_clauses(tokens: list[tuple[str, str]], query: _Query, jql: str) -> None:
    """Clauses joined by top-level ANDs, each maybe in parentheses (which may hold ANDs again)."""
    parts: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for token in tokens:
        kind, value = token
        depth += (token == ("op", "(")) - (token == ("op", ")"))
        if kind == "word" and value.lower() == "and" and depth == 0:
            parts.append([])
            continue
        if kind == "word" and (value.lower() == "or" or (value.lower() == "not" and not parts[-1])):
            raise HTTPProblem(
                400, f"The Jira sandbox does not support '{value.upper()}' in JQL ('{jql}'). {_JQL_HELP}"
            )
        parts[-1].append(token)
    if parts == [[]]:
        return
    for part in parts:
        if not part:
            raise HTTPProblem(400, f"Error in the JQL Query: expected a clause in '{jql}'.")
        if _wrapped(part):
            _parse_clauses(part[1:-1], query, jql)
            continue

        def unsupported(part: list[tuple[str, str]] = part) -> HTTPProblem:
            text = " ".join(f'"{v}"' if k == "str" else v for k, v in part)
            return HTTPProblem(400, f"The Jira sandbox does not support the JQL clause '{text}'. {_JQL_HELP}")

        query.clauses.append(_clause(part, unsupported))


def _wrapped(tokens: list[tuple[str, str]]) -> bool:
    """Whether the first token's parenthesis closes at the last token."""
    if not tokens or tokens[0] != ("op", "(") or tokens[-1] != ("op", ")"):
        return False
    depth = 0
    for index, token in enumerate(tokens):
        depth += (token == ("op", "(")) - (token == ("op", ")"))
        if depth == 0 and index < len(tokens) - 1:
            return False
    return True


def _clause(tokens: list[tuple[str, str]], unsupported: Callable[[], HTTPProblem]) -> tuple[str, str, Any]:
    if len(tokens) < 3 or tokens[0][0] != "word":
        raise unsupported()
    field = tokens[0][1].lower()
    if field not in _JQL_FIELDS:
        raise HTTPProblem(
            400,
            f"Field '{tokens[0][1]}' does not exist or you do not have permission to view it. {_JQL_HELP}",
        )
    field = {"createddate": "created", "updateddate": "updated"}.get(field, field)
    words = [t[1].lower() for t in tokens[1:3]]
    if words[0] == "is":
        op = "is not" if words[1] == "not" else "is"
        last = tokens[-1][1].lower()
        if last not in ("empty", "null") or len(tokens) != (4 if op == "is not" else 3):
            raise unsupported()
        return field, op, None
    if words[:2] == ["not", "in"] or words[0] == "in":
        op = "not in" if words[0] == "not" else "in"
        rest = tokens[3:] if op == "not in" else tokens[2:]
        if not rest or rest[0] != ("op", "(") or rest[-1] != ("op", ")"):
            raise unsupported()
        values = [t[1] for t in rest[1:-1] if t != ("op", ",")]
        return field, op, _jql_values(values)
    if tokens[1][0] != "op" or tokens[1][1] not in ("=", "!=", ">=", ">", "<=", "<") or len(tokens) != 3:
        raise unsupported()
    op = tokens[1][1]
    if field not in ("created", "updated") and op not in ("=", "!="):
        raise unsupported()
    value = tokens[2][1]
    if field in ("created", "updated"):
        return field, op, value
    return field, op, _jql_values([value])[0]


def _jql_values(values: list[str]) -> list[str]:
    return ["currentuser()" if v.lower() in ("currentuser()", "currentuser") else v for v in values]


def _sort_key(issue: dict[str, Any], field: str) -> Any:
    if field == "key":
        return int(issue["id"])
    return issue[field]


def _page_token(offset: int, jql: str) -> str:
    raw = json.dumps({"offset": offset, "jql": hashlib.sha1(jql.encode()).hexdigest()[:12]})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _read_page_token(token: Any, jql: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(str(token) + "=" * (-len(str(token)) % 4)))
        if data["jql"] != hashlib.sha1(jql.encode()).hexdigest()[:12]:
            raise ValueError("another query's token")
        return int(data["offset"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HTTPProblem(400, "The provided next page token is invalid or expired.") from exc


# --- small pieces ------------------------------------------------------------------------------


def _item(
    field: str,
    old: Any,
    old_text: Any,
    new: Any,
    new_text: Any,
    *,
    display: str | None = None,
    fieldtype: str = "jira",
) -> dict[str, Any]:
    return {
        "field": display or _CHANGE_NAMES.get(field, field),
        "fieldtype": fieldtype,
        "fieldId": field,
        "from": old,
        "fromString": old_text,
        "to": new,
        "toString": new_text,
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _status_name(status_id: str) -> str:
    return next(s[1] for s in _STATUSES if s[0] == status_id)


def _status_id(name: str) -> str:
    return next(s[0] for s in _STATUSES if s[1] == name)


def _category(status_id: str) -> int:
    return next(s[2] for s in _STATUSES if s[0] == status_id)


def _priority_name(priority_id: str | None) -> str | None:
    return None if priority_id is None else next(p[1] for p in _PRIORITIES if p[0] == priority_id)


def _lookup(table: Sequence[tuple[str, ...]], value: Any) -> str | None:
    """The id of a ``{"id": ...}`` or ``{"name": ...}`` reference into a table of (id, name, ...)."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        return None
    for row in table:
        if str(value.get("id")) == row[0] or value.get("name") == row[1]:
            return row[0]
    return None


def _custom(field_id: str) -> tuple[str, str, str, tuple[str, ...]] | None:
    return next((f for f in _CUSTOM_FIELDS if f[0] == field_id), None)


def _name_of(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name") or value.get("value") or value.get("id"))
    return str(value)


def _internal(properties: Sequence[Mapping[str, Any]]) -> bool:
    for prop in properties:
        if prop.get("key") == "sd.public.comment" and isinstance(prop.get("value"), dict):
            return bool(prop["value"].get("internal"))
    return False


def _id_hint(cloud: bool) -> str:
    if cloud:
        return 'Jira Cloud identifies users by accountId: send {"accountId": "..."}.'
    return 'Jira Data Center identifies users by username: send {"name": "..."}.'


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def _wanted_fields(spec: Sequence[str] | None) -> Callable[[str], bool] | None:
    """None for every field, else a predicate: ``*all``, ``*navigable``, names, ``-name`` exclusions."""
    if spec is None:
        return None
    names = [s for s in spec if s]
    if not names:
        return lambda name: False
    excluded = {n[1:] for n in names if n.startswith("-")}
    included = {n for n in names if not n.startswith("-")}
    every = bool(included & {"*all", "*navigable"}) or not included
    return lambda name: name not in excluded and (every or name in included)
