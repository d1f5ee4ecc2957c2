"""The pages driven in a real headless Chromium (Debian's, through Playwright) against the
app served on 127.0.0.1 over a real file store."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _ui_support import HOSTILE, Recorded, Server, write_config
from amsha import ExecutionSession
from playwright.sync_api import Page, expect


def _spans(session: ExecutionSession, run_id: str) -> list[str]:
    return list(dict.fromkeys(e["span_id"] for e in session.store.read_events(run_id)))


def test_the_runs_table_lists_recorded_runs(page: Page, ui: Server, recorded: Recorded) -> None:
    page.goto(ui.url + "/")
    rows = page.locator("#runs tbody tr[data-run-id]")
    expect(rows).to_have_count(5)
    ok = page.locator(f'tr[data-run-id="{recorded.ok}"]')
    expect(ok.locator(".status")).to_have_text("SUCCEEDED")
    expect(ok).to_contain_text("research, write")
    expect(page.locator(f'tr[data-run-id="{recorded.failed}"] .status')).to_have_text("FAILED")
    expect(page.locator(f'tr[data-run-id="{recorded.failed}"]')).to_contain_text("AuthenticationError")
    # newest first
    assert rows.first.get_attribute("data-run-id") == recorded.failed

    page.select_option("#filter-status", "FAILED")
    page.click("form.filters button")
    expect(page.locator("#runs tbody tr[data-run-id]")).to_have_count(1)
    page.fill("#filter-q", "no run has this text")
    page.click("form.filters button")
    expect(page.locator("#runs tbody tr[data-run-id]")).to_have_count(0)
    expect(page.locator("#runs")).to_contain_text("No runs match")


def test_pages_of_the_runs_table(page: Page, ui: Server, recorded: Recorded) -> None:
    page.goto(ui.url + "/?limit=3")
    rows = page.locator("#runs tbody tr[data-run-id]")
    expect(rows).to_have_count(3)
    first = rows.evaluate_all("rows => rows.map(r => r.dataset.runId)")
    page.click("#next-page")
    expect(rows).to_have_count(2)  # the page size is kept: 5 runs, 3 then 2
    second = rows.evaluate_all("rows => rows.map(r => r.dataset.runId)")
    assert not set(first) & set(second) and recorded.ok in second
    expect(page.locator("#next-page")).to_have_count(0)


def test_the_timeline_shows_every_span_and_a_span_opens_its_details(
    page: Page, ui: Server, recorded: Recorded, ui_session: ExecutionSession
) -> None:
    page.goto(f"{ui.url}/runs/{recorded.ok}")
    spans = _spans(ui_session, recorded.ok)
    rows = page.locator("#waterfall .span-row")
    expect(rows).to_have_count(len(spans))
    labels = rows.all_inner_texts()
    assert sum("RUN" in t.upper().split()[0] for t in labels) == 1
    assert [t for t in labels if "LLM CALL" in t.upper()].__len__() == 2
    assert sum(t.upper().startswith("TASK") for t in labels) == 2

    # Nothing is open until a span is clicked; then exactly that one.
    expect(page.locator(".span-detail:visible")).to_have_count(0)
    llm = page.locator("#waterfall .span-row.k-llm").first
    index = llm.get_attribute("data-span")
    llm.click()
    detail = page.locator(f"#span-detail-{index}")
    expect(detail).to_be_visible()
    expect(page.locator(".span-detail:visible")).to_have_count(1)
    expect(detail).to_contain_text("Usage")
    expect(detail).to_contain_text("input_tokens")
    expect(detail).to_contain_text("TTFT")
    expect(detail).to_contain_text("List facts about")  # the request's messages
    expect(detail).to_contain_text("llm.finished")  # its events
    page.locator("#waterfall .span-row.k-task").first.click()
    expect(detail).to_be_hidden()


def test_tool_calls_are_spans_with_their_arguments_and_result(
    page: Page, ui: Server, recorded: Recorded, ui_session: ExecutionSession
) -> None:
    page.goto(f"{ui.url}/runs/{recorded.tool}")
    rows = page.locator("#waterfall .span-row")
    expect(rows).to_have_count(len(_spans(ui_session, recorded.tool)))
    kinds = rows.evaluate_all("rows => rows.map(r => [...r.classList].find(c => c.startsWith('k-')))")
    assert kinds == ["k-run", "k-task", "k-llm", "k-tool", "k-llm"]
    tool = page.locator("#waterfall .span-row.k-tool")
    expect(tool).to_contain_text("add")
    tool.click()
    detail = page.locator(".span-detail:visible")
    expect(detail.locator("h4", has_text="Arguments")).to_be_visible()
    expect(detail).to_contain_text('"a": 40')
    expect(detail.locator("h4", has_text="Result")).to_be_visible()
    expect(detail).to_contain_text("tool.finished")
    expect(page.locator("pre.output[data-task=sum]")).to_have_text("The sum is 42.")


def test_retries_and_errors_are_shown(page: Page, ui: Server, recorded: Recorded) -> None:
    page.goto(f"{ui.url}/runs/{recorded.retried}")
    llm = page.locator("#waterfall .span-row.k-llm")
    expect(llm).to_contain_text("1 retry")
    llm.click()
    expect(page.locator(".span-detail:visible")).to_contain_text("llm.retry")
    page.goto(f"{ui.url}/runs/{recorded.failed}")
    expect(page.locator("#run-status")).to_have_text("FAILED")
    expect(page.locator(".run-head .run-error")).to_contain_text("AuthenticationError")
    page.locator("#waterfall .span-row.k-llm").click()
    expect(page.locator(".span-detail:visible .run-error")).to_contain_text("AuthenticationError")


def test_hostile_text_is_shown_as_text(page: Page, ui: Server, recorded: Recorded) -> None:
    for path in ("/", f"/runs/{recorded.ok}", "/metrics", f"/?q={HOSTILE[:20]}"):
        page.goto(ui.url + path)
        assert page.evaluate("window.__pwned") is None
        assert page.locator("img[src=x]").count() == 0
        assert page.locator("main script").count() == (1 if path.startswith("/runs/") else 0)  # tokens data only
    page.goto(f"{ui.url}/runs/{recorded.ok}")
    page.locator("details summary", has_text="inputs").click()
    expect(page.locator("pre.inputs")).to_contain_text("<script>window.__pwned=1</script>")
    expect(page.locator("pre.inputs")).to_contain_text("[/x] [bold]tags[/bold]")
    page.locator("#waterfall .span-row.k-llm").first.click()
    expect(page.locator(".span-detail:visible")).to_contain_text('<img src=x onerror="window.__pwned=2">')


def test_the_token_stream_replays(page: Page, ui: Server, recorded: Recorded) -> None:
    page.goto(f"{ui.url}/runs/{recorded.ok}")
    output = page.locator("pre.output[data-task=research]")
    recorded_text = output.inner_text()
    assert recorded_text.startswith("- Anemones clone themselves.")
    page.locator("button.replay[data-replay-task=research][data-pace=instant]").click()
    expect(output).to_have_attribute("data-replayed", "instant")
    assert output.inner_text() == recorded_text
    page.locator("button.replay[data-replay-task=research][data-pace=recorded]").click()
    expect(output).to_have_attribute("data-replayed", "recorded", timeout=10_000)
    assert output.inner_text() == recorded_text


def test_the_state_diff_shows_a_changed_key(page: Page, ui: Server, recorded: Recorded) -> None:
    page.goto(f"{ui.url}/runs/{recorded.changed}")
    page.select_option("#diff-a", "1")
    page.select_option("#diff-b", "2")
    page.click("#diff-form button")
    changed = page.locator('#diff-result tr.d-changed[data-key="research"]')
    expect(changed).to_be_visible()
    expect(changed.locator("pre.old")).to_have_text("old notes")
    expect(changed.locator("pre.new")).to_contain_text("Anemones clone themselves")
    expect(page.locator("#diff-result .diff-summary")).to_contain_text("1 changed, 1 unchanged")
    expect(page.locator('#diff-result tr[data-key="keep"]')).to_have_count(0)
    page.select_option("#diff-a", "0")
    page.click("#diff-form button")
    expect(page.locator('#diff-result tr.d-added[data-key="keep"]')).to_be_visible()


def test_metrics_charts(page: Page, ui: Server, recorded: Recorded) -> None:
    page.goto(f"{ui.url}/runs/{recorded.ok}")
    expect(page.locator(".metrics svg.chart")).to_have_count(6)
    assert page.locator(".metrics svg.chart rect.bar").count() >= 6
    page.goto(ui.url + "/metrics")
    charts = page.locator("svg.chart")
    assert charts.count() >= 4
    expect(charts.first.locator("title").first).to_contain_text("run-")


def test_a_live_run_streams_tokens_and_cancel_ends_it_cancelled(
    page: Page, ui: Server, recorded: Recorded, ui_session: ExecutionSession, tmp_path: Path
) -> None:
    # The run executes in another process that shares the store: tokens reach the page
    # through the store tail, and cancel through a cancel request in the store.
    config = write_config(
        recorded.folder,
        "slow.yaml",
        token_delay_s=0.05,
        responses=[
            {"match": "List facts", "text": " ".join(f"note{i}" for i in range(100))},
            {"match": "Write a paragraph", "text": " ".join(f"word{i}" for i in range(400))},
        ],
    )
    script = (
        "import sys; from amsha import ExecutionSession\n"
        "with ExecutionSession(sys.argv[1]) as s:\n"
        "    h = s.run(inputs={'topic': 'a slow one'}, run_id=sys.argv[2])\n"
        "    try: h.result()\n"
        "    except Exception as e: print(type(e).__name__)\n"
    )
    run_id = f"run-live-{time.time_ns()}"
    worker = subprocess.Popen([sys.executable, "-c", script, str(config), run_id], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if ui_session.store.read_events(run_id):
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "the worker's run never started"
            time.sleep(0.05)
        page.goto(f"{ui.url}/runs/{run_id}")
        expect(page.locator("#run-status")).to_have_text("RUNNING")
        # The first task streams for about 5 s; the timeline grows when the second starts.
        expect(page.locator("#waterfall .span-row.k-task")).to_have_count(1)
        expect(page.locator("#waterfall .span-row.k-task")).to_have_count(2, timeout=15_000)
        assert int(page.locator("#timeline").get_attribute("data-refreshed") or "0") >= 1
        live = page.locator("#live-output")
        expect(live).to_contain_text("word", timeout=10_000)
        first = int(live.get_attribute("data-chunks") or "0")
        page.wait_for_function("n => Number(document.querySelector('#live-output').dataset.chunks) > n + 3", arg=first)
        assert ui_session.get_run(run_id).status == "RUNNING"  # tokens appeared while it runs

        page.click("#cancel")
        expect(page.locator("#cancel-message")).to_contain_text("cancel requested")
        expect(page.locator("#run-status")).to_have_text("CANCELLED", timeout=10_000)  # after the page reloads
        assert worker.wait(15) == 0
        assert worker.stdout is not None and "RunCancelledError" in worker.stdout.read()
        record = ui_session.get_run(run_id)
        assert record.status == "CANCELLED" and "amsha ui" in (record.error or {}).get("message", "")
        expect(page.locator("#cancel")).to_have_count(0)
        expect(page.locator("#live")).to_have_count(0)
        expect(page.locator("#waterfall .span-row.k-llm").last).to_contain_text("cancelled")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_not_found_pages(page: Page, ui: Server) -> None:
    response = page.goto(ui.url + "/runs/run-that-never-was")
    assert response is not None and response.status == 404
    expect(page.locator(".error-message")).to_contain_text("run-that-never-was")


@pytest.fixture(autouse=True)
def _no_console_errors(page: Page) -> Any:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "404" not in msg.text else None)
    yield
    assert not errors, f"the page logged errors: {errors}"
