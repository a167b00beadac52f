"""A store that is really gone answers 503 (so the sender retries), and nothing else does."""

from __future__ import annotations

import shutil

from sqlalchemy import create_engine
from webhook_support import payload, zendesk_headers

from escalier.store.schema import metadata


def test_an_unreachable_store_is_a_503_and_not_ready(make_app, tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    url = f"sqlite:///{folder / 'escalier.db'}"
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    app = make_app(store_url=url, create_schema=False)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    app.extensions["escalier"].engine.dispose()
    shutil.rmtree(folder)

    body = payload("zendesk", "ticket-status-changed")
    response = client.post("/webhooks/zendesk", data=body, headers=zendesk_headers(body))
    assert response.status_code == 503
    assert response.json["error"] == "store_unavailable"
    assert response.headers["Retry-After"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["error"] == "store_unavailable"
    assert "escalier_store_up 0" in client.get("/metrics").text

    # Once the store is back, the sender's retry is stored.
    folder.mkdir()
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    assert client.post("/webhooks/zendesk", data=body, headers=zendesk_headers(body)).status_code == 202
