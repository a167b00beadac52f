"""The Jira sandbox, driven by the real ``jira`` client and checked against Atlassian's own specs."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from jira import JIRA, JIRAError

from escalier.connectors.jira.sandbox import JiraSandbox

ROOT = Path(__file__).resolve().parents[3]
SPECS = ROOT.parent / "shared" / "specs"
SECRET = "jira-sandbox-secret"
FAST = (0.05, 0.05)
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")
ESCALIER_CLOUD = "712020:2a8f6c1e-0c4e-4b4e-9b8a-5e6f7a8b9c0d"
MIA_CLOUD = "5b10ac8d82e05b22cc7d4ef5"


class Receiver:
    """Collects webhook deliveries on 127.0.0.1; answers the statuses it is told to, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append((dict(self.headers.items()), body))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet: the test reads what it needs from the receiver."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/jira"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def events(self) -> list[tuple[str, str | None]]:
        return [(p["webhookEvent"], p.get("issue_event_type_name")) for p in self.payloads()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture(params=["cloud", "datacenter"])
def site(request: pytest.FixtureRequest, receiver: Receiver) -> Iterator[JiraSandbox]:
    with JiraSandbox(
        deployment=request.param, webhook_url=receiver.url, webhook_secret=SECRET, webhook_retry_delays=FAST
    ) as sandbox:
        yield sandbox


@pytest.fixture
def cloud(receiver: Receiver) -> Iterator[JiraSandbox]:
    with JiraSandbox(webhook_url=receiver.url, webhook_secret=SECRET, webhook_retry_delays=FAST) as sandbox:
        yield sandbox


@pytest.fixture
def datacenter(receiver: Receiver) -> Iterator[JiraSandbox]:
    with JiraSandbox(
        deployment="datacenter", webhook_url=receiver.url, webhook_secret=SECRET, webhook_retry_delays=FAST
    ) as sandbox:
        yield sandbox


def connect(sandbox: JiraSandbox) -> JIRA:
    """The real client as Escalier configures it: no retries of its own, a timeout."""
    if sandbox.cloud:
        return JIRA(
            server=sandbox.url, basic_auth=("escalier@example.com", "sandbox-token"), max_retries=0, timeout=5
        )
    return JIRA(server=sandbox.url, token_auth="sandbox-token", max_retries=0, timeout=5)


def session(sandbox: JiraSandbox) -> requests.Session:
    http = requests.Session()
    if sandbox.cloud:
        http.auth = ("escalier@example.com", "sandbox-token")
    else:
        http.headers["Authorization"] = "Bearer sandbox-token"
    return http


def user_body(sandbox: JiraSandbox, handle: str) -> dict[str, str]:
    user = sandbox.user(handle)
    return {"accountId": user["accountId"]} if sandbox.cloud else {"name": user["name"]}


# --- the client against the site ---------------------------------------------------------------


def test_server_info_and_myself_per_flavour(site: JiraSandbox) -> None:
    client = connect(site)
    info = client.server_info()
    me = client.myself()
    if site.cloud:
        assert info["deploymentType"] == "Cloud" and info["versionNumbers"] == [1001, 0, 0]
        assert client._is_cloud and me["accountId"] == ESCALIER_CLOUD and "name" not in me
    else:
        assert info["deploymentType"] == "Server" and info["versionNumbers"][0] in (9, 10)
        assert (
            not client._is_cloud and me["name"] == "escalier" and me["emailAddress"] == "escalier@example.com"
        )
    assert me["displayName"] == "Escalier"


@pytest.mark.parametrize("deployment", ["cloud", "datacenter"])
def test_wrong_or_missing_credentials_get_401_in_jiras_shape(deployment: str) -> None:
    with JiraSandbox(deployment=deployment, user="bot@example.com", token="right") as sandbox:
        wrong = (
            JIRA(
                server=sandbox.url,
                basic_auth=("bot@example.com", "wrong"),
                max_retries=0,
                timeout=5,
                get_server_info=False,
            )
            if deployment == "cloud"
            else JIRA(server=sandbox.url, token_auth="wrong", max_retries=0, timeout=5, get_server_info=False)
        )
        with pytest.raises(JIRAError) as refused:
            wrong.myself()
        assert refused.value.status_code == 401
        anonymous = requests.get(f"{sandbox.url}/rest/api/2/myself", timeout=5)
        assert anonymous.status_code == 401
        assert anonymous.json()["errorMessages"] and anonymous.json()["errors"] == {}
        # serverInfo answers anonymously, as Jira's does.
        assert requests.get(f"{sandbox.url}/rest/api/2/serverInfo", timeout=5).status_code == 200
        # A Cloud token is no Data Center bearer, and the other way round.
        other = {"Authorization": "Bearer right"} if deployment == "cloud" else None
        auth = None if deployment == "cloud" else ("bot@example.com", "right")
        assert (
            requests.get(f"{sandbox.url}/rest/api/2/myself", headers=other, auth=auth, timeout=5).status_code
            == 401
        )


def test_create_get_and_edit_with_update_verbs(site: JiraSandbox) -> None:
    client = connect(site)
    issue = client.create_issue(
        fields={
            "project": {"key": "SUP"},
            "summary": "Sync fails",
            "issuetype": {"name": "Incident"},
            "priority": {"name": "High"},
            "labels": ["sync", "customer"],
            "components": [{"name": "Support L1"}],
            "customfield_10050": {"value": "high"},
            "customfield_10051": 40,
        }
    )
    assert issue.key == "SUP-1" and issue.fields.status.name == "To Do"
    assert issue.fields.reporter.displayName == "Escalier" and issue.fields.customfield_10050.value == "high"
    assert client.issue(issue.id).key == "SUP-1"  # by numeric id too
    issue.update(
        fields={"assignee": user_body(site, "jonas"), "customfield_10051": 120},
        update={
            "labels": [{"add": "tier-2"}, {"remove": "customer"}],
            "components": [{"remove": {"name": "Support L1"}}, {"add": {"name": "Support L2"}}],
            "priority": [{"set": {"name": "Highest"}}],
        },
    )
    assert issue.fields.labels == ["sync", "tier-2"]
    assert [c.name for c in issue.fields.components] == ["Support L2"]
    assert issue.fields.priority.name == "Highest" and issue.fields.assignee.displayName == "Jonas Weber"
    assert issue.fields.customfield_10051 == 120
    issue.update(update={"labels": [{"set": ["only"]}]})
    assert client.issue("SUP-1", fields="labels,summary").raw["fields"] == {
        "labels": ["only"],
        "summary": "Sync fails",
    }
    history = client.issue("SUP-1", expand="changelog").changelog.histories
    assert len(history) == 2
    fields_changed = {item.field for item in history[0].items}
    assert fields_changed == {"assignee", "Users affected", "labels", "Component", "priority"}


def test_edits_are_refused_in_jiras_shape(site: JiraSandbox) -> None:
    site.create_issue("SUP", "One")
    http = session(site)
    url = f"{site.url}/rest/api/2/issue/SUP-1"
    # Cloud removed usernames from its API; Data Center has no accountIds.
    wrong_user = {"name": "jonas"} if site.cloud else {"accountId": MIA_CLOUD}
    for body, field in (
        ({"fields": {"assignee": wrong_user}}, "assignee"),
        ({"update": {"components": [{"add": {"name": "Nope"}}]}}, "components"),
        ({"fields": {"customfield_99999": "x"}}, "customfield_99999"),
        ({"fields": {"labels": ["a"]}, "update": {"labels": [{"add": "b"}]}}, "labels"),
        ({"update": {"priority": [{"add": {"name": "High"}}]}}, "priority"),
    ):
        answer = http.put(url, json=body, timeout=5)
        assert answer.status_code == 400, body
        assert field in answer.json()["errors"] and answer.json()["errorMessages"] == []
    assert http.get(f"{site.url}/rest/api/2/issue/NOPE-9", timeout=5).json() == {
        "errorMessages": ["Issue does not exist or you do not have permission to see it."],
        "errors": {},
    }
    assert site.issue("SUP-1")["fields"]["labels"] == []  # nothing of a refused edit landed


def test_comments_keep_the_service_management_property(site: JiraSandbox) -> None:
    client = connect(site)
    site.create_issue("SUP", "In a service desk")
    site.create_issue("ENG", "In a software project")
    internal = client.add_comment("SUP-1", "Escalated to tier 2.", is_internal=True)
    public = client.add_comment("SUP-1", "We are on it.")
    plain = client.add_comment("ENG-1", "Looking.")
    assert internal.raw["jsdPublic"] is False and public.raw["jsdPublic"] is True
    assert "jsdPublic" not in plain.raw
    assert internal.raw["properties"] == [{"key": "sd.public.comment", "value": {"internal": True}}]
    assert internal.raw["author"]["displayName"] == "Escalier"
    listed = (
        session(site).get(f"{site.url}/rest/api/2/issue/SUP-1/comment?expand=properties", timeout=5).json()
    )
    assert listed["total"] == 2 and listed["comments"][0]["properties"][0]["key"] == "sd.public.comment"
    edited = client.comment("SUP-1", public.id)
    edited.update(body="We are on it (edited).")
    assert client.comments("SUP-1")[1].body == "We are on it (edited)."


def test_transitions_by_name_follow_the_workflow(site: JiraSandbox) -> None:
    client = connect(site)
    site.create_issue("SUP", "Workflow")
    assert {t["name"] for t in client.transitions("SUP-1")} == {"In Progress", "Waiting for customer", "Done"}
    client.transition_issue("SUP-1", "In Progress")
    issue = client.issue("SUP-1")
    assert issue.fields.status.statusCategory.key == "indeterminate" and issue.fields.resolution is None
    client.transition_issue("SUP-1", "Done")
    issue = client.issue("SUP-1")
    assert issue.fields.status.statusCategory.key == "done" and issue.fields.resolution.name == "Done"
    assert issue.fields.resolutiondate
    client.transition_issue("SUP-1", "Reopen")
    issue = client.issue("SUP-1", expand="changelog")
    assert issue.fields.status.name == "To Do" and issue.fields.resolution is None
    reopen_items = [(i.field, i.toString) for i in issue.changelog.histories[-1].items]
    assert reopen_items == [("resolution", None), ("status", "To Do")]
    refused = session(site).post(
        f"{site.url}/rest/api/2/issue/SUP-1/transitions", json={"transition": {"id": "51"}}, timeout=5
    )
    assert refused.status_code == 400 and "not valid" in refused.json()["errorMessages"][0]


def test_watchers_assignee_notify_and_properties(site: JiraSandbox) -> None:
    client = connect(site)
    site.create_issue("SUP", "Watch me", as_user="dana")
    # The client looks the user up, then posts the bare accountId (Cloud) or username (DC).
    client.add_watcher("SUP-1", "Priya" if site.cloud else "priya")
    watchers = client.watchers("SUP-1")
    assert watchers.watchCount == 1 and watchers.watchers[0].displayName == "Priya Raman"
    assert site.watchers("SUP-1") == [site.user("priya")["accountId" if site.cloud else "name"]]
    client.assign_issue("SUP-1", "Tomas" if site.cloud else "tomas")
    assert client.issue("SUP-1").fields.assignee.displayName == "Tomas Novak"
    http = session(site)
    notify = {"subject": "Escalated", "textBody": "Tier 2 has it.", "to": {"assignee": True}}
    assert http.post(f"{site.url}/rest/api/2/issue/SUP-1/notify", json=notify, timeout=5).status_code == 204
    assert site.notifications() == [{"issue": "SUP-1", **notify}]
    prop = f"{site.url}/rest/api/2/issue/SUP-1/properties/escalier"
    assert http.get(prop, timeout=5).status_code == 404
    assert http.put(prop, json={"tier": 2}, timeout=5).status_code == 201
    assert http.put(prop, json={"tier": 3}, timeout=5).status_code == 200
    assert http.get(prop, timeout=5).json() == {"key": "escalier", "value": {"tier": 3}}
    assert site.issue("SUP-1")["properties"] == {"escalier": {"tier": 3}}


def test_users_per_flavour(site: JiraSandbox) -> None:
    http = session(site)
    assignable = http.get(
        f"{site.url}/rest/api/2/user/assignable/search", params={"project": "SUP"}, timeout=5
    ).json()
    names = {u["displayName"] for u in assignable}
    assert "Dana Customer" not in names and "Mia Hoffmann" in names
    if site.cloud:
        dana = http.get(
            f"{site.url}/rest/api/2/user", params={"accountId": site.user("dana")["accountId"]}, timeout=5
        )
        assert dana.json()["accountType"] == "customer" and "emailAddress" not in dana.json()
        assert set(site.user("mia")) >= {
            "accountId",
            "accountType",
            "displayName",
        } and "name" not in site.user("mia")
    else:
        dana = http.get(f"{site.url}/rest/api/2/user", params={"username": "dana"}, timeout=5)
        assert dana.json()["emailAddress"] == "dana@customer.example" and "accountId" not in dana.json()
    assert (
        http.get(
            f"{site.url}/rest/api/2/user", params={"username": "ghost", "accountId": "ghost"}, timeout=5
        ).status_code
        == 404
    )


def test_search_on_data_center_pages_with_start_at(datacenter: JiraSandbox) -> None:
    client = connect(datacenter)
    for n in range(5):
        datacenter.create_issue("SUP", f"Issue {n}", labels=["batch"])
    datacenter.create_issue("ENG", "Elsewhere", labels=["batch"])
    page = client.search_issues("project = SUP ORDER BY created ASC", startAt=1, maxResults=2)
    assert [i.key for i in page] == ["SUP-2", "SUP-3"] and page.total == 5
    everything = client.search_issues("labels = batch", maxResults=0, expand="changelog", fields="summary")
    assert len(everything) == 6 and set(everything[0].raw["fields"]) == {"summary"}
    assert everything[0].raw["changelog"]["histories"] == []
    posted = client.search_issues("project = SUP", maxResults=2, use_post=True)
    assert len(posted) == 2
    # 3.10.5's search_issues on Data Center: GET /rest/api/2/field (to map names), then
    # GET /rest/api/2/search with startAt/maxResults, paging on total.
    assert datacenter.calls()["GET /rest/api/2/search"] >= 2
    assert datacenter.calls()["POST /rest/api/2/search"] == 1
    assert "GET /rest/api/2/search/jql" not in datacenter.calls()


def test_search_on_cloud_pages_with_next_page_token(cloud: JiraSandbox) -> None:
    client = connect(cloud)
    for n in range(5):
        cloud.create_issue("SUP", f"Issue {n}")
    # 3.10.5: enhanced_search_issues calls GET /rest/api/2/search/jql with jql, fields, expand,
    # maxResults and nextPageToken, following nextPageToken while maxResults is 0 (all); on Cloud
    # search_issues(startAt=0) is the same call and startAt > 0 raises.
    first = client.enhanced_search_issues("project = SUP ORDER BY created ASC", maxResults=2)
    assert [i.key for i in first] == ["SUP-1", "SUP-2"] and first.nextPageToken
    second = client.enhanced_search_issues(
        "project = SUP ORDER BY created ASC", maxResults=2, nextPageToken=first.nextPageToken
    )
    assert [i.key for i in second] == ["SUP-3", "SUP-4"]
    everything = client.enhanced_search_issues("project = SUP", maxResults=0)
    assert len(everything) == 5 and everything.nextPageToken is None
    ids_only = client.enhanced_search_issues("project = SUP", maxResults=1, json_result=True, fields="")
    assert ids_only["issues"] == [{"id": "10005"}] and ids_only["isLast"] is False
    assert cloud.calls()["GET /rest/api/2/search/jql"] == 4  # maxResults=0 asks for 100 a page
    http = session(cloud)
    removed = http.get(f"{cloud.url}/rest/api/2/search", params={"jql": "project = SUP"}, timeout=5)
    assert removed.status_code == 410 and "search/jql" in removed.json()["errorMessages"][0]
    unbounded = http.get(f"{cloud.url}/rest/api/3/search/jql", params={"jql": "ORDER BY updated"}, timeout=5)
    assert unbounded.status_code == 400 and "Unbounded" in unbounded.json()["errorMessages"][0]
    posted = http.post(
        f"{cloud.url}/rest/api/3/search/jql",
        json={"jql": "key = SUP-2", "fields": ["summary"], "expand": "changelog"},
        timeout=5,
    ).json()
    assert posted["issues"][0]["fields"] == {"summary": "Issue 1"} and "changelog" in posted["issues"][0]
    stale = http.get(
        f"{cloud.url}/rest/api/2/search/jql",
        params={"jql": "key = SUP-2", "nextPageToken": first.nextPageToken},
        timeout=5,
    )
    assert stale.status_code == 400


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize(
    ("jql", "keys"),
    [
        ("project = SUP", ["SUP-3", "SUP-2", "SUP-1"]),
        ("key = SUP-2", ["SUP-2"]),
        ("key in (SUP-1, SUP-3) ORDER BY key ASC", ["SUP-1", "SUP-3"]),
        ('status = "In Progress"', ["SUP-2"]),
        ("labels = vip AND project = SUP", ["SUP-3"]),
        ("(project = SUP) AND (labels = vip OR labels = x)", None),
        ('updated >= "2026/03/02 10:00" ORDER BY updated ASC', ["SUP-2", "SUP-3", "ENG-1"]),
        ('updated >= "2026-03-02 10:30" AND project = SUP', ["SUP-3"]),
        ('created >= "2026-03-02" AND created < "2026/03/02 10:00"', ["SUP-1"]),
        ("project = SUP ORDER BY updated DESC", ["SUP-3", "SUP-2", "SUP-1"]),
        ("assignee = currentUser()", ["SUP-3"]),
        ("assignee is EMPTY AND project = SUP", ["SUP-2", "SUP-1"]),  # by default newest first
        ("summary ~ sync", None),
        ("project = SUP ORDER BY priority", None),
    ],
)
def test_the_jql_subset(jql: str, keys: list[str] | None) -> None:
    # The API user lives in Paris: JQL dates are read in their time zone (UTC+1 in March).
    clock = Clock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    with JiraSandbox(deployment="datacenter", time_zone="Europe/Paris", clock=clock) as sandbox:
        sandbox.create_issue("SUP", "Before ten Paris")  # 09:00 Paris
        clock.now += timedelta(hours=1, minutes=10)
        sandbox.create_issue("SUP", "Ten past ten Paris")
        sandbox.transition("SUP-2", "In Progress")
        clock.now += timedelta(minutes=30)
        sandbox.create_issue("SUP", "VIP", labels=["vip"], assignee="escalier")
        sandbox.create_issue("ENG", "Other project", labels=["vip"])
        client = connect(sandbox)
        if keys is None:
            with pytest.raises(JIRAError) as refused:
                client.search_issues(jql)
            assert refused.value.status_code == 400
            assert "sandbox" in refused.value.text
        else:
            assert [i.key for i in client.search_issues(jql)] == keys


def test_rest_api_v3_and_latest_are_served_where_jira_serves_them(site: JiraSandbox) -> None:
    site.create_issue("SUP", "Versions")
    http = session(site)
    assert http.get(f"{site.url}/rest/api/latest/issue/SUP-1", timeout=5).status_code == 200
    v3 = http.get(f"{site.url}/rest/api/3/issue/SUP-1", timeout=5)
    assert v3.status_code == (200 if site.cloud else 404)
    assert site.calls()["GET /rest/api/latest/issue/{issueIdOrKey}"] == 1


# --- webhooks ----------------------------------------------------------------------------------


def test_webhooks_are_signed_and_identified_like_jiras(site: JiraSandbox, receiver: Receiver) -> None:
    site.create_issue("SUP", "Signed")
    assert site.wait_for_deliveries(5)
    ((headers, body),) = receiver.received
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature"] == expected
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["X-Atlassian-Webhook-Identifier"])
    assert headers["User-Agent"] == "Atlassian Webhook HTTP Client"
    assert headers["Content-Type"] == "application/json; charset=utf-8"


def test_issue_webhooks_carry_jiras_shapes_per_flavour(site: JiraSandbox, receiver: Receiver) -> None:
    client = connect(site)
    issue = client.create_issue(
        fields={
            "project": {"key": "SUP"},
            "summary": "Shapes",
            "issuetype": {"name": "Task"},
            "priority": {"name": "High"},
        }
    )
    client.assign_issue(issue.key, "Mia" if site.cloud else "mia")
    issue.update(update={"labels": [{"add": "tier-2"}]})
    issue.delete()
    assert site.wait_for_deliveries(5)
    assert receiver.events() == [
        ("jira:issue_created", "issue_created"),
        ("jira:issue_updated", "issue_assigned"),
        ("jira:issue_updated", "issue_updated"),
        ("jira:issue_deleted", None),
    ]
    created, assigned, updated, deleted = receiver.payloads()
    for payload in (created, assigned, updated, deleted):
        assert isinstance(payload["timestamp"], int) and payload["timestamp"] > 1_600_000_000_000
        assert DATE.match(payload["issue"]["fields"]["created"])
        assert payload["issue"]["key"] == "SUP-1"
    actor = created["user"]
    if site.cloud:
        assert (
            actor["accountId"] == ESCALIER_CLOUD
            and actor["accountType"] == "atlassian"
            and "name" not in actor
        )
    else:
        assert actor["name"] == "escalier" and actor["key"] == "escalier" and "accountId" not in actor
    item = assigned["changelog"]["items"][0]
    mia = MIA_CLOUD if site.cloud else "mia"
    assert {k: item[k] for k in ("field", "fieldtype", "from", "to", "toString")} == {
        "field": "assignee",
        "fieldtype": "jira",
        "from": None,
        "to": mia,
        "toString": "Mia Hoffmann",
    }
    assert ("fieldId" in item) is site.cloud
    assert isinstance(assigned["changelog"]["id"], str)
    assert updated["changelog"]["items"][0]["toString"] == "tier-2"
    assert {i["field"] for i in created["changelog"]["items"]} >= {
        "summary",
        "priority",
        "reporter",
        "Status",
    }
    assert "changelog" not in deleted and "issue_event_type_name" not in deleted


def test_the_changelog_id_of_a_webhook_is_the_history_id_rest_returns(
    site: JiraSandbox, receiver: Receiver
) -> None:
    site.create_issue("SUP", "History")
    site.update_issue("SUP-1", priority="Highest", as_user="mia")
    site.transition("SUP-1", "Done", as_user="jonas")
    assert site.wait_for_deliveries(5)
    hooked = [p["changelog"]["id"] for p in receiver.payloads()[1:]]
    histories = connect(site).issue("SUP-1", expand="changelog").raw["changelog"]["histories"]
    assert [h["id"] for h in histories] == hooked
    assert histories[1]["author"]["displayName"] == "Jonas Weber"
    assert [i["field"] for i in histories[1]["items"]] == ["resolution", "status"]


def test_comment_webhooks_come_twice_in_each_flavours_shape(site: JiraSandbox, receiver: Receiver) -> None:
    site.create_issue("SUP", "Comments")
    client = connect(site)
    comment = client.add_comment("SUP-1", "Internal note.", is_internal=True)
    comment.update(body="Internal note, edited.")
    assert site.wait_for_deliveries(5)
    events = receiver.events()[1:]
    assert events == [
        ("comment_created", None),
        ("jira:issue_updated", "issue_commented"),
        ("comment_updated", None),
        ("jira:issue_updated", "issue_comment_edited"),
    ]
    created, commented, updated, edited = receiver.payloads()[1:]
    assert created["comment"]["id"] == comment.id and created["comment"]["jsdPublic"] is False
    assert created["comment"]["self"].endswith(
        f"/rest/api/2/issue/{comment.raw['self'].split('/')[-3]}/comment/{comment.id}"
    )
    if site.cloud:
        assert set(created) == {"timestamp", "webhookEvent", "comment", "issue"}
        assert set(created["issue"]) == {"id", "self", "key", "fields"}
        assert set(created["issue"]["fields"]) == {
            "summary",
            "issuetype",
            "project",
            "assignee",
            "priority",
            "status",
        }
        assert set(updated) == {"timestamp", "webhookEvent", "comment", "issue"}
    else:
        # Data Center's comment_created names neither the issue nor the actor.
        assert set(created) == {"timestamp", "webhookEvent", "comment"}
        assert set(updated) == {"timestamp", "webhookEvent", "comment", "user"}
    assert commented["comment"]["body"] == "Internal note." and "changelog" not in commented
    assert edited["comment"]["body"] == "Internal note, edited."
    assert commented["issue"]["fields"]["comment"]["total"] == 1


def test_helpers_act_as_people_and_send_the_same_webhooks(site: JiraSandbox, receiver: Receiver) -> None:
    created = site.create_issue(
        "SUP",
        "From the portal",
        as_user="dana",
        priority="High",
        fields={"customfield_10050": {"value": "critical"}},
    )
    site.add_comment("SUP-1", "Any news?", as_user="dana")
    site.assign("SUP-1", "mia", as_user="mia")
    site.update_issue("SUP-1", labels=["tier-1"], as_user="mia")
    assert created["fields"]["reporter"]["displayName"] == "Dana Customer"
    assert created["fields"]["customfield_10050"]["value"] == "critical"
    assert site.wait_for_deliveries(5)
    payloads = receiver.payloads()
    assert payloads[0]["user"]["displayName"] == "Dana Customer"
    assert [p["webhookEvent"] for p in payloads] == [
        "jira:issue_created",
        "comment_created",
        "jira:issue_updated",
        "jira:issue_updated",
        "jira:issue_updated",
    ]
    assert payloads[-1]["user"]["displayName"] == "Mia Hoffmann"
    assert site.calls() == {}  # helpers are people in the UI, not API calls
    with pytest.raises(KeyError):
        site.add_comment("SUP-1", "?", as_user="nobody")


def test_a_failed_delivery_is_retried_with_the_same_identifier(site: JiraSandbox, receiver: Receiver) -> None:
    receiver.answers = [500, 503]
    site.create_issue("SUP", "Retried")
    assert site.wait_for_deliveries(5)
    identifiers = [h["X-Atlassian-Webhook-Identifier"] for h, _ in receiver.received]
    assert len(identifiers) == 3 and len(set(identifiers)) == 1
    assert [h.get("X-Atlassian-Webhook-Retry") for h, _ in receiver.received] == [None, "1", "2"]
    assert len({body for _, body in receiver.received}) == 1
    (delivery,) = site.deliveries()
    assert delivery["statuses"] == [500, 503, 200] and delivery["state"] == "delivered"
    assert delivery["id"] == identifiers[0]


def test_dropped_webhooks_are_not_sent(site: JiraSandbox, receiver: Receiver) -> None:
    requests.post(f"{site.url}/_sandbox/webhooks", json={"drop": 2}, timeout=5)
    site.create_issue("SUP", "Dropped")  # created + nothing else
    site.add_comment("SUP-1", "Dropped too, and its issue_commented is sent")
    assert site.wait_for_deliveries(5)
    assert receiver.events() == [("jira:issue_updated", "issue_commented")]
    assert [d["state"] for d in site.deliveries()] == ["dropped", "dropped", "delivered"]


# --- faults, budget, counts, keys, reset -------------------------------------------------------


def test_faults_reach_the_client_and_are_counted(site: JiraSandbox) -> None:
    site.create_issue("SUP", "Faulty")
    client = connect(site)
    site.inject_fault(429, count=1, retry_after=12, method="GET", path="/rest/api/2/issue/*")
    with pytest.raises(JIRAError) as limited:
        client.issue("SUP-1")
    assert limited.value.status_code == 429 and limited.value.response.headers["Retry-After"] == "12"
    requests.post(
        f"{site.url}/_sandbox/faults",
        json={"status": 503, "method": "PUT", "path": "/rest/api/2/issue/*"},
        timeout=5,
    )
    issue = client.issue("SUP-1")
    with pytest.raises(JIRAError) as unavailable:
        issue.update(fields={"summary": "Changed"})
    assert unavailable.value.status_code == 503
    site.inject_fault(delay=0.5, path="/rest/api/2/issue/SUP-1")
    slow = JIRA(
        server=site.url,
        max_retries=0,
        timeout=0.2,
        get_server_info=False,
        **(
            {"basic_auth": ("escalier@example.com", "sandbox-token")}
            if site.cloud
            else {"token_auth": "sandbox-token"}
        ),
    )
    with pytest.raises(requests.exceptions.Timeout):
        slow.issue("SUP-1")
    assert site.calls()["GET /rest/api/2/issue/{issueIdOrKey}"] == 3
    assert site.calls()["PUT /rest/api/2/issue/{issueIdOrKey}"] == 1
    assert site.issue("SUP-1")["fields"]["summary"] == "Faulty"


def test_the_write_budget_answers_429_like_jira(site: JiraSandbox) -> None:
    site.create_issue("SUP", "Budget")
    client = connect(site)
    site.rate_limit(2, per_seconds=60)
    client.add_comment("SUP-1", "one")
    client.add_comment("SUP-1", "two")
    with pytest.raises(JIRAError) as limited:
        client.add_comment("SUP-1", "three")
    assert limited.value.status_code == 429 and 1 <= int(limited.value.response.headers["Retry-After"]) <= 60
    assert len(client.comments("SUP-1")) == 2  # reads are not budgeted


def test_an_action_applied_twice_is_named(site: JiraSandbox) -> None:
    site.create_issue("SUP", "Twice")
    http = session(site)
    url = f"{site.url}/rest/api/2/issue/SUP-1/comment"
    body = {"body": "Moved to tier 2.\n\nescalier:action=jira:default:SUP-1:4"}
    for _ in range(2):  # a worker that lost its outbox record and wrote again
        assert (
            http.post(
                url, json=body, headers={"X-Escalier-Action-Keys": "jira:default:SUP-1:4"}, timeout=5
            ).status_code
            == 201
        )
    http.put(
        f"{site.url}/rest/api/2/issue/SUP-1",
        json={"update": {"labels": [{"add": "tier-2"}]}},
        headers={"X-Escalier-Action-Keys": "jira:default:SUP-1:5"},
        timeout=5,
    )
    assert len(site.comments("SUP-1")) == 2  # applied again: the sandbox is not idempotent for us
    assert site.key_counts() == {"jira:default:SUP-1:4": 2, "jira:default:SUP-1:5": 1}
    assert site.duplicate_keys() == ["jira:default:SUP-1:4"]


def test_reset_restores_the_seeded_site(site: JiraSandbox) -> None:
    site.create_issue("SUP", "Gone after reset")
    client = connect(site)
    client.issue("SUP-1")
    assert requests.post(f"{site.url}/_sandbox/reset", timeout=5).status_code == 204
    assert site.calls() == {}
    with pytest.raises(JIRAError) as missing:
        client.issue("SUP-1")
    assert missing.value.status_code == 404
    assert site.create_issue("SUP", "Numbering starts again")["key"] == "SUP-1"
    assert requests.get(f"{site.url}/_sandbox/calls", timeout=5).json()["calls"] == {
        "GET /rest/api/2/issue/{issueIdOrKey}": 1,
    }


def test_policy_snippet_points_at_the_sandbox(site: JiraSandbox) -> None:
    snippet = site.policy_snippet()
    assert f"url: {site.url}" in snippet and f"deployment: {site.deployment}" in snippet
    assert "token: ${JIRA_API_TOKEN}" in snippet and "export JIRA_API_TOKEN=sandbox-token" in snippet
    assert f"export JIRA_WEBHOOK_SECRET={SECRET}" in snippet
    assert f"service_account: {site.service_account}" in snippet
    assert ("user: escalier@example.com" in snippet) is site.cloud


# --- Atlassian's own descriptions --------------------------------------------------------------

CLOUD_SPEC = "jira-cloud-platform-v3.swagger-v3.v3.json"
DC_SPEC = "jira-software-dc-10.3.24.openapi.json"


def _nullable(schema: dict[str, Any], *names: str) -> None:
    for name in names:
        schema["properties"][name]["nullable"] = True


# Where the published descriptions disagree with what Jira answers, named one by one.
RELAXATIONS = {
    CLOUD_SPEC: {
        # Real changelog items carry null from/to (e.g. a first assignee, labels by string only).
        "ChangeDetails: from, fromString, to, toString are nullable": lambda s: _nullable(
            s["ChangeDetails"], "from", "fromString", "to", "toString"
        ),
    },
    DC_SPEC: {
        "ChangeItemBean: from, fromString, to, toString are nullable": lambda s: _nullable(
            s["ChangeItemBean"], "from", "fromString", "to", "toString"
        ),
        # DC types every IssueBean.fields value as an object; strings, lists and null are real.
        "IssueBean.fields: values of any type": lambda s: s["IssueBean"]["properties"]["fields"].update(
            additionalProperties={}
        ),
    },
}


@cache
def _registry(name: str) -> Any:
    referencing = pytest.importorskip("referencing")
    from referencing.jsonschema import DRAFT4

    path = SPECS / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the vendors' API descriptions are not on this machine")
    document = copy.deepcopy(json.loads(path.read_text()))
    for relax in RELAXATIONS[name].values():
        relax(document["components"]["schemas"])
    resource = referencing.Resource.from_contents(document, default_specification=DRAFT4)
    return referencing.Registry().with_resource(f"urn:{name}", resource)


def assert_valid(spec: str, schema: str, instance: Any) -> None:
    """``instance`` against ``#/components/schemas/<schema>`` of the spec, every error listed."""
    validators = pytest.importorskip("openapi_schema_validator")
    validator = validators.OAS30Validator(
        {"$ref": f"urn:{spec}#/components/schemas/{schema}"}, registry=_registry(spec)
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]
    assert not errors, f"{schema}: " + "\n".join(errors[:10])


def _populate(sandbox: JiraSandbox) -> None:
    sandbox.create_issue(
        "SUP",
        "Spec",
        labels=["a"],
        components=["Billing"],
        assignee="mia",
        fields={"customfield_10050": {"value": "high"}, "customfield_10051": 12},
    )
    sandbox.add_comment("SUP-1", "Internal.", internal=True)
    sandbox.update_issue("SUP-1", labels=["b"], assignee=None)
    sandbox.transition("SUP-1", "Done")
    connect(sandbox).add_watcher("SUP-1", sandbox.service_account if not sandbox.cloud else "Escalier")


def test_cloud_answers_match_atlassians_cloud_spec(cloud: JiraSandbox) -> None:
    _populate(cloud)
    http = session(cloud)
    api = f"{cloud.url}/rest/api/2"
    for schema, path in (
        ("ServerInformation", "/serverInfo"),
        ("User", "/myself"),
        ("IssueBean", "/issue/SUP-1?expand=changelog"),
        ("PageOfComments", "/issue/SUP-1/comment"),
        ("Comment", "/issue/SUP-1/comment/10001"),
        ("Transitions", "/issue/SUP-1/transitions"),
        ("Watchers", "/issue/SUP-1/watchers"),
        ("SearchAndReconcileResults", "/search/jql?jql=project%20%3D%20SUP&fields=*all&expand=changelog"),
        ("SearchAndReconcileResults", "/search/jql?jql=project%20%3D%20SUP"),
        ("PageBeanChangelog", "/issue/SUP-1/changelog"),
        ("Project", "/project/SUP"),
    ):
        answer = http.get(api + path, timeout=5)
        assert answer.status_code == 200, path
        assert_valid(CLOUD_SPEC, schema, answer.json())
    for user in http.get(f"{api}/user/assignable/search?project=SUP", timeout=5).json():
        assert_valid(CLOUD_SPEC, "User", user)
    for field in http.get(f"{api}/field", timeout=5).json():
        assert_valid(CLOUD_SPEC, "FieldDetails", field)
    assert_valid(CLOUD_SPEC, "ErrorCollection", http.get(f"{api}/issue/NOPE-1", timeout=5).json())
    created = http.post(
        f"{api}/issue",
        json={"fields": {"project": {"key": "SUP"}, "summary": "x", "issuetype": {"id": "10001"}}},
        timeout=5,
    ).json()
    assert_valid(CLOUD_SPEC, "CreatedIssue", created)


def test_datacenter_answers_match_atlassians_datacenter_spec(datacenter: JiraSandbox) -> None:
    _populate(datacenter)
    http = session(datacenter)
    api = f"{datacenter.url}/rest/api/2"
    for schema, path in (
        ("ServerInfoBean", "/serverInfo"),
        ("UserBean", "/myself"),
        ("IssueBean", "/issue/SUP-1?expand=changelog"),
        ("CommentsWithPaginationJsonBean", "/issue/SUP-1/comment"),
        ("CommentJsonBean", "/issue/SUP-1/comment/10001"),
        ("TransitionsMetaBean", "/issue/SUP-1/transitions"),
        ("SearchResultsBean", "/search?jql=project%20%3D%20SUP&expand=changelog"),
    ):
        answer = http.get(api + path, timeout=5)
        assert answer.status_code == 200, path
        assert_valid(DC_SPEC, schema, answer.json())
    # DC declares these lists as single items; each item is checked.
    for user in http.get(f"{api}/user/assignable/search?project=SUP", timeout=5).json():
        assert_valid(DC_SPEC, "UserBean", user)
    for field in http.get(f"{api}/field", timeout=5).json():
        assert_valid(DC_SPEC, "FieldBean", field)
    for status in http.get(f"{api}/status", timeout=5).json():
        assert_valid(DC_SPEC, "StatusJsonBean", status)
    for priority in http.get(f"{api}/priority", timeout=5).json():
        assert_valid(DC_SPEC, "PriorityJsonBean", priority)
    assert_valid(DC_SPEC, "ErrorCollection", http.get(f"{api}/issue/NOPE-1", timeout=5).json())


# --- the command -------------------------------------------------------------------------------


def _sandbox_parser() -> Any:
    import argparse

    from escalier.sandbox import add_sandbox_command

    parser = argparse.ArgumentParser(prog="escalier")
    add_sandbox_command(parser.add_subparsers())
    return parser


def test_sandbox_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        _sandbox_parser().parse_args(["sandbox", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for expected in (
        "in-memory server",
        "/_sandbox/",
        "examples:",
        "escalier sandbox jira",
        "--webhook-url",
        "--deployment",
        "exit status",
    ):
        assert expected in text


def test_an_unknown_sandbox_is_refused_with_the_available_ones(capsys: pytest.CaptureFixture[str]) -> None:
    args = _sandbox_parser().parse_args(["sandbox", "nothing-like-it"])
    assert args.handler(args) == 2
    assert "'nothing-like-it' is not an installed connector; sandboxes available:" in capsys.readouterr().err


def _command() -> list[str]:
    """``escalier sandbox`` if the CLI has it, else the same command on a parser of its own."""
    from escalier import cli

    choices = cli._build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if "sandbox" in choices:
        return [sys.executable, "-m", "escalier", "sandbox"]
    script = (
        "import argparse, sys\n"
        "from escalier.sandbox import add_sandbox_command\n"
        "parser = argparse.ArgumentParser(prog='escalier')\n"
        "add_sandbox_command(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.handler(args))\n"
    )
    return [sys.executable, "-c", script, "sandbox"]


def _jira_registers_its_sandbox() -> bool:
    from escalier.plugins import get_plugin_manager

    specs = [s for found in get_plugin_manager().hook.register_connectors() for s in found]
    return any(s.name == "jira" and getattr(s, "sandbox", None) is JiraSandbox for s in specs)


def _finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for the process to exit; everything it printed after the first line, and its errors."""
    process.wait(timeout=10)
    assert process.stdout is not None and process.stderr is not None
    return process.stdout.read(), process.stderr.read()


def _serve(command: list[str]) -> tuple[subprocess.Popen[str], str, str]:
    """The started process, its URL, and what it printed up to saying so."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if found:
            return process, found.group(1), line
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"the sandbox did not start: {process.communicate()}")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_run_sandbox_serves_jira_and_exits_cleanly(stop: signal.Signals) -> None:
    script = (
        "import sys\n"
        "from escalier.connectors._sandbox import run_sandbox\n"
        "from escalier.connectors.jira.sandbox import JiraSandbox\n"
        "sys.exit(run_sandbox(JiraSandbox(deployment='datacenter', webhook_secret='s'), out=sys.stdout))\n"
    )
    process, url, first = _serve([sys.executable, "-c", script])
    try:
        info = requests.get(f"{url}/rest/api/2/serverInfo", timeout=5).json()
        assert info["deploymentType"] == "Server"
    finally:
        process.send_signal(stop)
        out, err = _finish(process)
    out = first + out
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "deployment: datacenter" in out and "export JIRA_WEBHOOK_SECRET=s" in out and "stopped" in out


@pytest.mark.skipif(
    not _jira_registers_its_sandbox(), reason="the Jira ConnectorSpec does not register its sandbox yet"
)
def test_escalier_sandbox_jira_starts_on_a_free_port() -> None:
    process, url, first = _serve([*_command(), "jira", "--port", "0", "--deployment", "datacenter"])
    try:
        assert requests.get(f"{url}/rest/api/2/serverInfo", timeout=5).json()["deploymentType"] == "Server"
    finally:
        process.send_signal(signal.SIGINT)
        out, err = _finish(process)
    out = first + out
    assert process.returncode == 0 and "Traceback" not in err
    assert "control API" in out and "connectors:" in out
