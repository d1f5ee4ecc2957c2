"""What the pages compute: spans from events, the waterfall, token streams, diffs, charts
and the escaping of JSON for script elements."""

from __future__ import annotations

import json
import re

from amsha_ui._view import (
    bar_chart,
    build_spans,
    diff_states,
    fmt_duration,
    json_for_script,
    pretty,
    token_streams,
    waterfall,
)


def ev(seq: int, kind: str, span: str, parent: str | None = None, ts: float = 0.0, **data: object) -> dict:
    return {"seq": seq, "kind": kind, "span_id": span, "parent_id": parent, "ts": ts, "task": "t", "data": data}


def test_spans_nest_and_carry_llm_details() -> None:
    events = [
        ev(0, "run.started", "r", ts=10.0),
        ev(1, "task.started", "t1", "r", ts=10.1),
        ev(2, "llm.started", "l1", "t1", ts=10.2, model="m", request={"messages": [], "temperature": 0.2}),
        ev(3, "llm.retry", "l1", "t1", ts=10.3, attempt=1),
        ev(4, "llm.token", "l1", "t1", ts=10.5, text="he"),
        ev(5, "llm.token", "l1", "t1", ts=10.6, text="llo"),
        ev(6, "llm.finished", "l1", "t1", ts=10.7, usage={"input_tokens": 3}, retries=1, latency_s=0.5),
        ev(7, "tool.started", "x1", "t1", ts=10.75, tool="search", arguments="{}"),
        ev(8, "tool.failed", "x1", "t1", ts=10.8, tool="search", error={"type": "ToolError", "message": "no"}),
        ev(9, "task.finished", "t1", "r", ts=10.9, output="hello"),
        ev(10, "run.finished", "r", ts=11.0),
    ]
    spans = build_spans(events)
    assert [(s.kind, s.depth) for s in spans] == [("run", 0), ("task", 1), ("llm", 2), ("tool", 2)]
    llm = spans[2]
    assert llm.text == "hello" and llm.tokens == 2 and llm.retries == 1 and llm.model == "m"
    assert abs(llm.ttft_s - 0.3) < 1e-9  # no ttft_s recorded: first token minus start
    assert [e["kind"] for e in llm.events] == ["llm.started", "llm.retry", "llm.finished"]  # tokens counted, not kept
    assert spans[3].status == "failed" and spans[3].error == {"type": "ToolError", "message": "no"}
    assert spans[1].detail["output"] == "hello"
    rows = waterfall(spans)
    assert rows[0]["x"] == 0 and rows[0]["w"] == 1000
    assert 0 < rows[2]["x"] < rows[2]["ttft_x"] < rows[2]["x"] + rows[2]["w"]


def test_spans_open_when_the_run_ended_are_unfinished() -> None:
    spans = build_spans(
        [ev(0, "run.started", "r", ts=1), ev(1, "task.started", "t", "r", ts=2), ev(2, "run.cancelled", "r", ts=3)]
    )
    assert [(s.kind, s.status, s.end) for s in spans] == [("run", "cancelled", 3), ("task", "unfinished", 3)]


def test_a_live_run_reaches_now_and_a_parent_cycle_is_not_lost() -> None:
    spans = build_spans([ev(0, "run.started", "r", ts=1), ev(1, "task.started", "t", "r", ts=2)], now=5)
    assert [s.status for s in spans] == ["running", "running"]
    assert waterfall(spans)[1]["x"] == 250.0
    loop = build_spans([ev(0, "task.started", "a", "b", ts=1), ev(1, "task.started", "b", "a", ts=2)], now=3)
    assert sorted(s.span_id for s in loop) == ["a", "b"]


def test_token_streams_per_task_with_offsets() -> None:
    events = [
        {"kind": "llm.token", "task": "a", "ts": 5.0, "data": {"text": "x"}},
        {"kind": "llm.token", "task": "a", "ts": 5.25, "data": {"text": "y"}},
        {"kind": "llm.token", "task": None, "ts": 9.0, "data": {"text": "z"}},
    ]
    assert token_streams(events) == {"a": [(0.0, "x"), (0.25, "y")], "": [(0.0, "z")]}


def test_diff_is_key_level_and_compares_values_as_json() -> None:
    diff = diff_states({"a": 1, "b": {"x": [1, 2]}, "c": "same"}, {"b": {"x": [1, 3]}, "c": "same", "d": None})
    assert diff.added == [("d", None)] and diff.removed == [("a", 1)]
    assert diff.changed == [("b", {"x": [1, 2]}, {"x": [1, 3]})] and diff.unchanged == 1
    assert diff_states({"k": {"a": 1, "b": 2}}, {"k": {"b": 2, "a": 1}}).changed == []


def test_json_for_script_cannot_end_the_element() -> None:
    value = {"t": "</script><script>alert(1)</script><!-- & \u2028"}
    text = str(json_for_script(value))
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value


def test_charts_escape_labels_and_scale_bars() -> None:
    svg = str(bar_chart("<b>title</b>", ["<script>", "b"], [("s&p", [2.0, 1.0])], unit="s"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&lt;b&gt;" in svg and "s&amp;p" in svg
    heights = [float(h) for h in re.findall(r'<rect class="bar s0"[^>]*height="([\d.]+)"', svg)]
    assert len(heights) == 2 and abs(heights[0] - 2 * heights[1]) < 0.2
    assert "<rect" not in str(bar_chart("empty", ["a"], [("s", [None])])).split("</text>", 5)[-1]


def test_text_helpers() -> None:
    assert fmt_duration(None) == "-" and fmt_duration(0.25) == "250 ms" and fmt_duration(3.5) == "3.50 s"
    assert fmt_duration(125) == "2 min 5 s"
    assert pretty("abc") == "abc" and pretty({"a": 1}) == '{\n  "a": 1\n}'
    cut = pretty("x" * 50, limit=10)
    assert cut.startswith("x" * 10) and "40 more characters" in cut
