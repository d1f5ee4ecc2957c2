"""The JSON endpoints, the event stream, the guard (Host, token, CSRF header) and secrets,
over HTTP against the app served on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _ui_support import HOSTILE, Recorded, Server, write_config
from amsha import ExecutionSession
from amsha.secrets import register_secret
from amsha.state import RunOwner, RunRecord


@pytest.fixture
def client(ui: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ui.url, timeout=10) as c:
        yield c


def test_api_index_documents_the_endpoints(client: httpx.Client) -> None:
    body = client.get("/api").json()
    assert body["store"] == "file"
    assert set(body["endpoints"]) >= {
        "GET /api/runs",
        "GET /api/runs/{id}",
        "GET /api/runs/{id}/events",
        "GET /api/runs/{id}/stream",
        "POST /api/runs/{id}/cancel",
    }


def test_api_runs_pages_and_filters(client: httpx.Client, recorded: Recorded) -> None:
    everything = client.get("/api/runs").json()
    ids = [r["run_id"] for r in everything["runs"]]
    assert {recorded.ok, recorded.failed, recorded.retried, recorded.changed, recorded.tool} <= set(ids)
    assert everything["next_before"] is None
    seen, before = [], None
    while True:
        page = client.get("/api/runs", params={"limit": 1, **({"before": before} if before else {})}).json()
        seen += [r["run_id"] for r in page["runs"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == ids
    failed = client.get("/api/runs", params={"status": "failed"}).json()["runs"]
    assert [r["run_id"] for r in failed] == [recorded.failed]
    assert [r["run_id"] for r in client.get("/api/runs", params={"q": "owls"}).json()["runs"]] == [recorded.retried]
    assert client.get("/api/runs", params={"status": "DONE"}).status_code == 400
    assert client.get("/api/runs", params={"limit": "x"}).status_code == 400
    assert client.get("/api/runs", params={"before": "garbage"}).status_code == 400


def test_api_run_and_events(client: httpx.Client, recorded: Recorded, ui_session: ExecutionSession) -> None:
    body = client.get(f"/api/runs/{recorded.ok}").json()
    assert body["run"]["status"] == "SUCCEEDED" and body["run"]["inputs"]["topic"] == HOSTILE
    kinds = [s["kind"] for s in body["spans"]]
    assert kinds == ["run", "task", "llm", "task", "llm"]
    assert [v["version"] for v in body["state_versions"]] == [1, 2]
    assert body["duration_s"] > 0

    recorded_events = ui_session.store.read_events(recorded.ok)
    events = client.get(f"/api/runs/{recorded.ok}/events").json()
    assert events["events"] == json.loads(json.dumps(recorded_events))
    part = client.get(f"/api/runs/{recorded.ok}/events", params={"from_seq": 5, "limit": 3}).json()
    assert [e["seq"] for e in part["events"]] == [5, 6, 7] and part["next_from_seq"] == 8
    assert client.get("/api/runs/nope").status_code == 404
    assert client.get("/api/runs/nope/events").json()["error"]
    assert client.get("/runs/nope").status_code == 404


def test_the_stream_of_an_ended_run_replays_then_ends(client: httpx.Client, recorded: Recorded) -> None:
    expected = [
        e["seq"] for e in client.get(f"/api/runs/{recorded.ok}/events", params={"from_seq": 3}).json()["events"]
    ]
    seqs, ended = [], None
    with client.stream("GET", f"/api/runs/{recorded.ok}/stream", params={"from_seq": 3}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "amsha":
                seqs.append(json.loads(line[6:])["seq"])
            elif line.startswith("data: ") and kind == "end":
                ended = json.loads(line[6:])
                break
    assert seqs == expected and ended == {"status": "SUCCEEDED"}
    # Reconnecting with Last-Event-ID resumes after it.
    with client.stream("GET", f"/api/runs/{recorded.ok}/stream", headers={"Last-Event-ID": str(expected[-2])}) as r:
        data = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    assert [d.get("seq") for d in data] == [expected[-1], None]
    assert client.get("/api/runs/nope/stream").status_code == 404


def test_cancel_needs_the_header_and_reports_the_outcome(client: httpx.Client, recorded: Recorded) -> None:
    assert client.post(f"/api/runs/{recorded.ok}/cancel", json={}).status_code == 403
    ok = client.post(f"/api/runs/{recorded.ok}/cancel", json={"reason": "x"}, headers={"X-Amsha-UI": "1"})
    assert ok.status_code == 200 and ok.json()["outcome"] == "ended"
    assert client.get(f"/api/runs/{recorded.ok}").json()["run"]["status"] == "SUCCEEDED"
    missing = client.post("/api/runs/nope/cancel", headers={"X-Amsha-UI": "1"})
    assert missing.status_code == 404


def test_only_get_and_the_cancel_post_exist(client: httpx.Client, recorded: Recorded) -> None:
    assert client.post(f"/api/runs/{recorded.ok}").status_code == 405
    assert client.delete(f"/api/runs/{recorded.ok}").status_code == 405
    assert client.put("/api/runs").status_code == 405


def test_security_headers_and_host_guard(client: httpx.Client) -> None:
    response = client.get("/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert client.get("/", headers={"Host": "attacker.example:8765"}).status_code == 421
    assert client.get("/", headers={"Host": "localhost"}).status_code == 200


def test_a_token_guards_every_request(recorded: Recorded, ui_session: ExecutionSession) -> None:
    from amsha_ui import create_app

    token = "t0ken-for-the-test"
    with Server(create_app(ui_session, token=token)) as server, httpx.Client(base_url=server.url) as c:
        for path in ("/", "/api/runs", f"/runs/{recorded.ok}", "/static/app.js", f"/api/runs/{recorded.ok}/stream"):
            assert c.get(path).status_code == 401, path
        assert c.get("/api/runs", headers={"Authorization": "Bearer wrong-token-x"}).status_code == 401
        assert c.get("/api/runs", params={"token": "wrong-token-x"}).status_code == 401
        assert c.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.get("/api/runs", params={"token": token}).status_code == 200
        first = c.get("/", params={"token": token, "status": "FAILED"})
        assert first.status_code == 303 and first.headers["location"] == "/?status=FAILED"
        assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=Strict" in first.headers["set-cookie"]
        assert token not in first.headers["location"]
        after = c.get("/?status=FAILED")  # the cookie from the redirect
        assert after.status_code == 200 and recorded.failed in after.text and recorded.ok not in after.text


def test_registered_secrets_never_appear(client: httpx.Client, recorded: Recorded, tmp_path: Path) -> None:
    canary = f"sk-canary-{time.time_ns()}"
    register_secret(canary)
    # Written behind the store's back (a store that forgot to scrub): the UI scrubs too.
    events = recorded.folder / "store" / "events" / f"{recorded.retried}.jsonl"
    lines = events.read_text(encoding="utf-8").splitlines()
    last = json.loads(lines[-1])
    leak = {**last, "seq": last["seq"] + 1, "kind": "framework.note", "data": {"note": f"key {canary}"}}
    events.write_text("\n".join([*lines, json.dumps(leak)]) + "\n", encoding="utf-8")
    for path in (
        f"/runs/{recorded.retried}",
        f"/api/runs/{recorded.retried}",
        f"/api/runs/{recorded.retried}/events",
        f"/api/runs/{recorded.retried}/stream?from_seq=0",
    ):
        text = client.get(path).text
        assert canary not in text, path
    assert "key ***" in client.get(f"/api/runs/{recorded.retried}/events").text


def test_the_diff_fragment(client: httpx.Client, recorded: Recorded) -> None:
    text = client.get(f"/runs/{recorded.changed}/diff", params={"a": 1, "b": 2}).text
    assert 'data-key="research"' in text and "d-changed" in text
    assert client.get(f"/runs/{recorded.changed}/diff", params={"a": 1, "b": 99}).status_code == 404
    assert client.get(f"/runs/{recorded.changed}/diff", params={"a": "one"}).status_code == 400


def test_a_large_run_page_is_bounded(client: httpx.Client, recorded: Recorded, ui_session: ExecutionSession) -> None:
    # A value far larger than a page should hold is cut on the page, whole in the API.
    big = "x" * 50_000
    events = ui_session.store.read_events(recorded.changed)
    last = events[-1]
    ui_session.store.append_events(
        recorded.changed, [{**last, "seq": last["seq"] + 1, "kind": "framework.blob", "data": {"blob": big}}]
    )
    page = client.get(f"/runs/{recorded.changed}").text
    assert big not in page and "more characters" in page
    assert big in client.get(f"/api/runs/{recorded.changed}/events").text


def test_a_lost_run_is_listed_and_shown_lost(tmp_path: Path) -> None:
    from amsha_ui import create_app

    with ExecutionSession(write_config(tmp_path, "amsha.yaml")) as session:
        with Server(create_app(session)) as server, httpx.Client(base_url=server.url) as c:
            record = RunRecord(run_id="run-lost", status="RUNNING", started_at=time.time())
            session.store.claim_run(record, RunOwner.here(), 0.5)
            assert [r["status"] for r in c.get("/api/runs").json()["runs"]] == ["RUNNING"]
            time.sleep(0.6)  # the owner never renews: its lease expires
            assert [r["run_id"] for r in c.get("/api/runs", params={"status": "LOST"}).json()["runs"]] == ["run-lost"]
            assert c.get("/api/runs", params={"status": "RUNNING"}).json()["runs"] == []
            page = c.get("/runs/run-lost").text
            assert 'id="run-status">LOST<' in page and 'id="cancel"' not in page and 'id="live"' not in page
            assert c.post("/api/runs/run-lost/cancel", headers={"X-Amsha-UI": "1"}).json()["outcome"] == "lost"
            with c.stream("GET", "/api/runs/run-lost/stream") as r:  # the tail ends for a LOST run
                assert [x for x in r.iter_lines() if x.startswith("data: ")] == ['data: {"status": "LOST"}']


def test_the_timeline_fragment(client: httpx.Client, recorded: Recorded) -> None:
    text = client.get(f"/runs/{recorded.tool}/timeline").text
    assert text.lstrip().startswith('<section class="timeline" id="timeline">') and "<html" not in text
    assert text.count('class="span-row') == 5 and 'data-span-id="' in text
    assert client.get("/runs/nope/timeline").status_code == 404


def test_browsing_never_writes_to_the_store(tmp_path: Path) -> None:
    from amsha_ui import create_app

    config = write_config(tmp_path, "amsha.yaml")
    with ExecutionSession(config) as session:
        run_id = session.run(inputs={"topic": "ro"}).result().run_id
        store = tmp_path / "store"

        def snapshot() -> dict[str, tuple[int, int]]:
            return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(store.rglob("*")) if p.is_file()}

        before = snapshot()
        with Server(create_app(session)) as server, httpx.Client(base_url=server.url) as c:
            for path in (
                "/",
                "/?status=FAILED&q=x",
                "/metrics",
                f"/runs/{run_id}",
                f"/runs/{run_id}/timeline",
                f"/runs/{run_id}/diff?a=0&b=2",
                "/api/runs",
                f"/api/runs/{run_id}",
                f"/api/runs/{run_id}/events",
                f"/api/runs/{run_id}/stream",
            ):
                assert c.get(path).status_code == 200, path
        assert snapshot() == before
