"""What the pages show, computed from records and events: spans and their waterfall, token
streams, key-level state diffs, and plain SVG charts. No web framework here; every string
that reaches HTML is escaped (``markupsafe``, through Jinja's autoescaping or explicitly in
the SVG builders).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

__all__ = [
    "Diff",
    "axis",
    "Span",
    "bar_chart",
    "build_spans",
    "diff_states",
    "fmt_duration",
    "json_for_script",
    "pretty",
    "token_streams",
]

MAX_DETAIL_CHARS = 4000
"""Event data and values shown in a page are cut at this length (the API gives them whole)."""

_KIND = {"run": "run", "task": "task", "agent": "agent", "llm": "llm", "tool": "tool"}
_ENDS = {"finished": "ok", "failed": "failed", "cancelled": "cancelled"}


@dataclass(slots=True)
class Span:
    """One span of a run (the run itself, a task, an agent, an LLM call, a tool call) as the
    waterfall shows it."""

    span_id: str
    kind: str
    name: str
    parent_id: str | None
    start: float
    end: float | None = None
    status: str = "running"
    """``ok``, ``failed``, ``cancelled``, ``running`` or ``unfinished`` (the run ended first)."""
    task: str | None = None
    agent: str | None = None
    depth: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    """Its events, token chunks left out (they are counted in :attr:`tokens`)."""
    tokens: int = 0
    parts: list[str] = field(default_factory=list)
    """The streamed text, chunk by chunk (:attr:`text` joins them)."""
    first_token: float | None = None
    retries: int = 0
    model: str | None = None
    request: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    """Kind-specific extras: a tool's arguments and result, a task's output, a run's reason."""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def duration(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - self.start)

    @property
    def label(self) -> str:
        return {"llm": "LLM call", "tool": "tool call"}.get(self.kind, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "span_id": self.span_id,
            "kind": self.kind,
            "name": self.name,
            "parent_id": self.parent_id,
            "start": self.start,
            "end": self.end,
            "duration_s": self.duration,
            "status": self.status,
            "task": self.task,
            "agent": self.agent,
            "depth": self.depth,
            "tokens": self.tokens,
            "retries": self.retries,
            "model": self.model,
            "usage": self.usage,
            "error": self.error,
            "ttft_s": self.ttft_s,
            "latency_s": self.latency_s,
        }


def _kind_of(event_kind: str) -> str:
    return _KIND.get(event_kind.split(".", 1)[0], "other")


def build_spans(events: Iterable[Mapping[str, Any]], *, now: float | None = None) -> list[Span]:
    """The spans of a run from its events, in tree order (each span followed by its
    children, by start time), with their depth. Spans still open when the run ended are
    ``unfinished`` and end with it; open spans of a live run end ``now`` for the layout."""
    spans: dict[str, Span] = {}
    order: list[str] = []
    run_end: float | None = None
    last_ts = 0.0
    for event in events:
        kind = str(event.get("kind", ""))
        ts = float(event.get("ts") or 0.0)
        last_ts = max(last_ts, ts)
        span_id = str(event.get("span_id") or "")
        data = event.get("data") or {}
        span = spans.get(span_id)
        if span is None:
            skind = _kind_of(kind) if kind != "state.snapshot" else "run"
            span = Span(
                span_id,
                skind,
                _name(skind, event, data),
                event.get("parent_id"),
                ts,
                task=event.get("task"),
                agent=event.get("agent"),
            )
            spans[span_id] = span
            order.append(span_id)
        if kind == "llm.token":
            span.tokens += 1
            span.parts.append(str(data.get("text", "")))
            if span.first_token is None:
                span.first_token = ts
            continue
        span.events.append(dict(event))
        verb = kind.rsplit(".", 1)[-1]
        if kind == "llm.started":
            span.model = data.get("model")
            span.request = data.get("request")
        elif kind == "llm.retry":
            span.retries += 1
        elif kind == "tool.started":
            span.detail["arguments"] = data.get("arguments")
        elif kind == "tool.finished":
            span.detail["result"] = data.get("result")
        elif kind == "task.finished":
            span.detail["output"] = data.get("output")
        elif kind == "run.cancelled":
            span.detail["reason"] = data.get("reason")
        if verb in _ENDS and span.kind != "other" and kind != "state.snapshot":
            span.end = ts
            span.status = _ENDS[verb]
            if isinstance(data.get("error"), dict):
                span.error = data["error"]
                if data["error"].get("cancelled"):
                    span.status = "cancelled"
            if span.kind == "llm":
                span.usage = data.get("usage")
                span.latency_s = data.get("latency_s")
                span.ttft_s = data.get("ttft_s")
                span.retries = int(data.get("retries") or span.retries)
                if data.get("cancelled"):
                    span.status = "cancelled"
            if span.kind == "run":
                run_end = ts
    for span in spans.values():
        if span.kind == "llm" and span.ttft_s is None and span.first_token is not None:
            span.ttft_s = span.first_token - span.start
        if span.end is None:
            if run_end is not None:
                span.status = "unfinished"
                span.end = run_end
            elif span.kind == "other":
                span.status = "ok"
                span.end = span.start
    live_end = max(last_ts, time.time() if now is None else now)
    return _tree(spans, order, live_end)


def _name(kind: str, event: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    if kind == "run":
        return "run"
    if kind == "task":
        return str(event.get("task") or "task")
    if kind == "agent":
        return str(event.get("agent") or "agent")
    if kind == "llm":
        return str(data.get("model") or data.get("llm") or "LLM call")
    if kind == "tool":
        return str(data.get("tool") or "tool")
    return str(event.get("kind") or "event")


def _tree(spans: dict[str, Span], order: list[str], live_end: float) -> list[Span]:
    children: dict[str | None, list[Span]] = {}
    for span_id in order:
        span = spans[span_id]
        parent = span.parent_id if span.parent_id in spans and span.parent_id != span_id else None
        children.setdefault(parent, []).append(span)
    out: list[Span] = []
    seen: set[str] = set()

    def visit(span: Span, depth: int) -> None:
        if span.span_id in seen:
            return
        seen.add(span.span_id)
        span.depth = depth
        out.append(span)
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start):
            visit(child, depth + 1)

    for root in sorted(children.get(None, []), key=lambda s: s.start):
        visit(root, 0)
    for span in spans.values():  # a cycle of parent ids: shown flat rather than lost
        if span.span_id not in seen:
            visit(span, 0)
    for span in out:
        if span.end is None:
            span.detail["live_end"] = live_end
    return out


def waterfall(spans: Sequence[Span], width: float = 1000.0) -> list[dict[str, Any]]:
    """Each span's bar as ``x``/``w`` in a ``width``-wide track (open spans reach the last
    moment seen), and its TTFT mark for LLM calls."""
    if not spans:
        return []
    t0 = min(s.start for s in spans)
    t1 = max((s.end if s.end is not None else s.detail.get("live_end", s.start)) for s in spans)
    total = max(t1 - t0, 1e-9)
    rows = []
    for s in spans:
        end = s.end if s.end is not None else s.detail.get("live_end", s.start)
        x = (s.start - t0) / total * width
        w = max((end - s.start) / total * width, 2.0)
        row: dict[str, Any] = {"span": s, "x": round(x, 2), "w": round(min(w, width - x if x < width else 2.0), 2)}
        if s.kind == "llm" and s.ttft_s is not None:
            row["ttft_x"] = round((s.start + s.ttft_s - t0) / total * width, 2)
        row["offset_s"] = s.start - t0
        rows.append(row)
    return rows


def axis(spans: Sequence[Span], ticks: int = 5) -> list[str]:
    """Labels of ``ticks`` evenly spaced moments of the waterfall, from its start to its end."""
    if not spans:
        return []
    t0 = min(s.start for s in spans)
    t1 = max((s.end if s.end is not None else s.detail.get("live_end", s.start)) for s in spans)
    total = max(t1 - t0, 0.0)
    return ["0" if i == 0 else fmt_duration(total * i / (ticks - 1)) for i in range(ticks)]


def token_streams(events: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[float, str]]]:
    """Per task (``""`` for tokens outside a task), the streamed chunks with their offset in
    seconds from the first chunk of that task, for replay at the recorded pace."""
    out: dict[str, list[tuple[float, str]]] = {}
    first: dict[str, float] = {}
    for event in events:
        if event.get("kind") != "llm.token":
            continue
        task = str(event.get("task") or "")
        ts = float(event.get("ts") or 0.0)
        t0 = first.setdefault(task, ts)
        out.setdefault(task, []).append((round(ts - t0, 4), str((event.get("data") or {}).get("text", ""))))
    return out


@dataclass(slots=True)
class Diff:
    """A key-level diff between two versions of a state."""

    added: list[tuple[str, Any]]
    removed: list[tuple[str, Any]]
    changed: list[tuple[str, Any, Any]]
    unchanged: int


def diff_states(a: Mapping[str, Any], b: Mapping[str, Any]) -> Diff:
    """Keys added, removed and changed from ``a`` to ``b`` (values compared as JSON)."""
    added = [(k, b[k]) for k in sorted(b) if k not in a]
    removed = [(k, a[k]) for k in sorted(a) if k not in b]
    changed = []
    unchanged = 0
    for key in sorted(set(a) & set(b)):
        if _canon(a[key]) != _canon(b[key]):
            changed.append((key, a[key], b[key]))
        else:
            unchanged += 1
    return Diff(added, removed, changed, unchanged)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def pretty(value: Any, limit: int = MAX_DETAIL_CHARS) -> str:
    """A value as text for a page: strings as they are, the rest as indented JSON; cut at
    ``limit`` characters (saying how much was left out)."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > limit:
        return f"{text[:limit]}\n... ({len(text) - limit} more characters; the JSON API has them all)"
    return text


def json_for_script(value: Any) -> Markup:
    """JSON safe to put inside ``<script type="application/json">``: no ``<``, ``>`` or
    ``&`` that could end the element or open a comment, no line separators."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Markup(text)


def fmt_duration(seconds: float | None) -> str:
    """``812 ms``, ``3.25 s``, ``4 min 12 s``; ``-`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else f"{seconds * 1000:.2f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes:.0f} min {rest:.0f} s"


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    unit: str = "",
    height: int = 160,
    ticks: Sequence[str] | None = None,
) -> Markup:
    """A grouped bar chart as an inline SVG (no script, no external asset): one group per
    label, one bar per series, a label and its values in each bar's tooltip; with few
    groups, ``ticks`` (default: the labels) name them under the bars. Everything
    interpolated is escaped."""
    n = len(labels)
    k = max(len(series), 1)
    width = max(320, min(1200, 40 + n * (10 + 12 * k)))
    top, bottom, left = 34, 18, 62
    values = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    vmax = max(values) if values else 0.0
    vmax = vmax if vmax > 0 else 1.0
    plot_h = height - top - bottom
    group_w = (width - left - 6) / max(n, 1)
    bar_w = max(1.0, min(24.0, (group_w - 4) / k))
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label="{escape(title)}">',
        f'<text class="chart-title" x="6" y="14">{escape(title)}</text>',
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - 4}" y2="{top + plot_h}"/>',
        f'<text class="tick" x="{left - 4}" y="{top + 4}" text-anchor="end">{escape(_num(vmax))}</text>',
        f'<text class="tick" x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, label in enumerate(labels):
        gx = left + 3 + i * group_w
        for j, (name, vs) in enumerate(series):
            v = vs[i] if i < len(vs) else None
            if v is None or not math.isfinite(v):
                continue
            h = max(v / vmax * plot_h, 0.5 if v > 0 else 0)
            x = gx + j * bar_w
            tip = f"{label} · {name}: {_num(v)}{(' ' + unit) if unit else ''}"
            parts.append(
                f'<rect class="bar s{j}" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                f'height="{h:.1f}"><title>{escape(tip)}</title></rect>'
            )
    if 0 < n <= 16:  # few groups: name each under its bars (cut to the room it has)
        room = max(3, min(16, int(group_w / 6.5)))
        for i, label in enumerate(ticks if ticks is not None else labels):
            text = label if len(label) <= room else label[: room - 1] + "…"
            cx = left + 3 + i * group_w + min(group_w - 4, bar_w * k) / 2
            parts.append(f'<text class="tick" x="{cx:.1f}" y="{height - 5}" text-anchor="middle">{escape(text)}</text>')
    if len(series) > 1:
        lx = left
        for j, (name, _) in enumerate(series):
            parts.append(f'<rect class="bar s{j}" x="{lx}" y="19" width="9" height="9"/>')
            parts.append(f'<text class="tick" x="{lx + 13}" y="27">{escape(name)}</text>')
            lx += 24 + 7 * len(name)
    if unit:
        parts.append(f'<text class="tick" x="{width - 4}" y="14" text-anchor="end">{escape(unit)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"
