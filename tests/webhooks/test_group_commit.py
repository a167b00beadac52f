"""Concurrent requests share commits, and each is stored exactly once."""

from __future__ import annotations

import json
import threading
from collections import Counter

from webhook_support import jira_headers, rows


def test_many_concurrent_requests_are_each_stored_once(app):
    threads, per_thread = 16, 25
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def send(worker: int) -> None:
        client = app.test_client()
        start.wait()
        for n in range(per_thread):
            body = json.dumps(
                {"timestamp": 1772812200000, "webhookEvent": "jira:issue_updated",
                 "issue": {"id": str(worker * 1000 + n)}}
            ).encode()
            # Every other request is sent twice: the retry must be a duplicate, never a second row.
            repeats = 2 if n % 2 else 1
            for _ in range(repeats):
                response = client.post("/webhooks/jira", data=body,
                                       headers=jira_headers(body, delivery=f"w{worker}-{n}"))
                with lock:
                    answers.append((response.status_code, response.json["status"]))

    pool = [threading.Thread(target=send, args=(worker,)) for worker in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    stored = rows(app)
    assert len(stored) == threads * per_thread
    assert Counter(row.delivery_id for row in stored).most_common(1)[0][1] == 1
    tally = Counter(answers)
    assert tally[(202, "accepted")] == threads * per_thread
    assert tally[(200, "duplicate")] == threads * (per_thread // 2)
    committer = app.extensions["escalier"].committer
    assert committer.rows == len(answers)
    # Batching actually happened: fewer transactions than requests.
    assert committer.batches < committer.rows
