"""The ASGI app: server-rendered pages, JSON endpoints and a server-sent event stream over
one session's store. Read-only on the store, except ``POST /api/runs/{id}/cancel``.

Pages: ``/`` (runs), ``/runs/{id}`` (a run), ``/runs/{id}/diff`` (a state diff) and
``/runs/{id}/timeline`` (the timeline; both page fragments), ``/metrics`` (charts across runs). JSON: ``/api`` (this list), ``/api/runs``,
``/api/runs/{id}``, ``/api/runs/{id}/events?from_seq=N``, ``/api/runs/{id}/stream``
(``text/event-stream``), ``POST /api/runs/{id}/cancel``. See the README for their fields.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from amsha.errors import AmshaError, RunNotFoundError, StateError, StateNotFoundError
from amsha.state import RunRecord, RunStatus
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import __version__
from ._store import CancelNotSupportedError, RunSource, run_duration
from ._view import (
    axis,
    bar_chart,
    build_spans,
    diff_states,
    fmt_duration,
    json_for_script,
    pretty,
    token_streams,
    waterfall,
)

__all__ = ["API", "create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PAGE_SIZE = 50
MAX_PAGE = 500
STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "LOST")
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEARTBEAT_S = 15.0

API = {
    "GET /api/runs": "runs, newest first: ?limit (1..500, default 50), ?before (the next_before of the previous page), "
    "?status (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, LOST), ?q (text in run id, tasks, inputs, error)",
    "GET /api/runs/{id}": "the run's record, its spans (run, task, agent, LLM call, tool call) and its state versions",
    "GET /api/runs/{id}/events": "recorded events: ?from_seq (default 0), ?limit (default all); next_from_seq resumes",
    "GET /api/runs/{id}/stream": "text/event-stream of events from ?from_seq (or Last-Event-ID + 1), live; "
    "each message has id = seq and event = amsha; a last message of event 'end' carries the final status",
    "POST /api/runs/{id}/cancel": 'ask the run to stop: JSON body {"reason": "..."} and header X-Amsha-UI: 1; '
    "returns the outcome (requested, cancelled, ended, lost)",
}


def create_app(
    session: Any,
    *,
    token: str | None = None,
    loopback_only: bool = True,
    page_size: int = PAGE_SIZE,
) -> Starlette:
    """The run inspector over ``session``'s store (an :class:`amsha.ExecutionSession`).

    ``token``: when set, every request must carry it (``Authorization: Bearer``, the cookie
    a first visit with ``?token=`` sets, or ``?token=`` itself). ``loopback_only``: refuse
    requests whose ``Host`` is not a loopback name (a DNS-rebinding guard; turn it off only
    when serving another address, which then requires a token).
    """
    source = RunSource(session)
    env = Environment(loader=PackageLoader("amsha_ui", "templates"), autoescape=select_autoescape(default=True))
    env.filters.update(
        duration=fmt_duration, pretty=pretty, script_json=json_for_script, when=_when, num=_num, short=_short
    )
    env.globals.update(version=__version__, statuses=STATUSES, store_name=source.store_name)

    def render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context), status_code=status_code)

    # ---- pages --------------------------------------------------------------------------

    def runs_page(request: Request) -> Response:
        filters = _filters(request, page_size)
        page = source.page(filters["limit"], before=filters["before"], status=filters["status"], text=filters["q"])
        now = time.time()
        rows = [_run_row(r, now) for r in page.runs]
        nxt = None
        if page.next_before:
            nxt = "?" + urlencode({k: v for k, v in {**_query(filters), "before": page.next_before}.items() if v})
        return render("runs.html", rows=rows, filters=filters, next_url=nxt, first_url=_first_url(filters))

    def run_page(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        record = source.run(run_id)
        events = source.events(run_id)
        spans = build_spans(events)
        streams = token_streams(events)
        versions = source.versions(record.state_id) if record.state_id else []
        calls = [s for s in spans if s.kind == "llm"]
        outputs: dict[str, Any] = dict(record.outputs)
        for span in spans:  # a task still streaming (or cut short) shows what it produced
            if span.kind == "llm" and span.task and span.task not in outputs and span.parts:
                outputs.setdefault(span.task, span.text)
        charts = _run_charts(record, calls)
        live = record.status in RunStatus.ACTIVE
        default_b = record.state_version or (versions[-1].version if versions else 0)
        return render(
            "run.html",
            run=record,
            row=_run_row(record, time.time()),
            rows=waterfall(spans),
            axis=axis(spans),
            spans=spans,
            outputs=outputs,
            streams=streams,
            versions=versions,
            diff_a=record.base_version or 0,
            diff_b=default_b,
            charts=charts,
            live=live,
            next_seq=(int(events[-1]["seq"]) + 1) if events else 0,
            cancellable=live and source.can_cancel,
        )

    def timeline_fragment(request: Request) -> Response:
        """The timeline section alone: a live page refreshes it as spans start and end."""
        run_id = request.path_params["run_id"]
        source.run(run_id)
        spans = build_spans(source.events(run_id))
        return render("_timeline.html", rows=waterfall(spans), axis=axis(spans))

    def diff_page(request: Request) -> Response:
        record = source.run(request.path_params["run_id"])
        if not record.state_id:
            raise HTTPException(404, f"run {record.run_id} has no state")
        a, b = _int(request, "a", 0), _int(request, "b", record.state_version or 0)
        diff = diff_states(source.state(record.state_id, a), source.state(record.state_id, b))
        return render("diff.html", run=record, a=a, b=b, diff=diff)

    def metrics_page(request: Request) -> Response:
        filters = _filters(request, 200)
        page = source.page(filters["limit"], before=filters["before"], status=filters["status"], text=filters["q"])
        runs = list(reversed(page.runs))  # oldest first, left to right
        return render("metrics.html", charts=_across_charts(runs), count=len(runs), filters=filters)

    # ---- JSON ---------------------------------------------------------------------------

    def api_index(request: Request) -> Response:
        return JSONResponse({"amsha_ui": __version__, "store": source.store_name, "endpoints": API})

    def api_runs(request: Request) -> Response:
        filters = _filters(request, page_size)
        page = source.page(filters["limit"], before=filters["before"], status=filters["status"], text=filters["q"])
        return JSONResponse({"runs": [r.to_dict() for r in page.runs], "next_before": page.next_before})

    def api_run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        record = source.run(run_id)
        spans = build_spans(source.events(run_id))
        versions = source.versions(record.state_id) if record.state_id else []
        return JSONResponse(
            {
                "run": record.to_dict(),
                "duration_s": run_duration(record),
                "spans": [s.to_dict() for s in spans],
                "state_versions": [
                    {"version": v.version, "created_at": v.created_at, "run_id": v.run_id, "reason": v.reason}
                    for v in versions
                ],
            }
        )

    def api_events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        from_seq = _int(request, "from_seq", 0)
        limit = _int(request, "limit", 0)
        events = source.events(run_id, from_seq)
        if limit > 0:
            events = events[:limit]
        next_seq = int(events[-1]["seq"]) + 1 if events else from_seq
        return JSONResponse({"run_id": run_id, "events": events, "next_from_seq": next_seq})

    async def api_stream(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        from_seq = _int(request, "from_seq", -1)
        if from_seq < 0:
            last = request.headers.get("last-event-id", "")
            from_seq = int(last) + 1 if last.isdigit() else 0
        await run_in_threadpool(source.run, run_id)  # 404 before the stream starts
        return StreamingResponse(
            _sse(source, run_id, from_seq),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def api_cancel(request: Request) -> Response:
        if request.headers.get("x-amsha-ui") != "1":
            return JSONResponse(
                {"error": "send the header X-Amsha-UI: 1 (it keeps other sites from cancelling runs)"}, 403
            )
        try:
            body = await request.json()
        except ValueError:
            body = {}
        reason = str((body or {}).get("reason") or "cancelled from amsha ui")[:500]
        run_id = request.path_params["run_id"]
        try:
            outcome = await run_in_threadpool(source.cancel, run_id, reason)
        except CancelNotSupportedError as exc:
            return JSONResponse({"error": str(exc)}, 409)
        return JSONResponse({"run_id": run_id, "outcome": outcome})

    # ---- errors -------------------------------------------------------------------------

    def _wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api")

    async def not_found(request: Request, exc: Exception) -> Response:
        message = str(exc.detail) if isinstance(exc, HTTPException) else str(exc)
        code = exc.status_code if isinstance(exc, HTTPException) else 404
        if _wants_json(request):
            return JSONResponse({"error": message}, code)
        return render("error.html", status_code=code, code=code, message=message)

    async def store_error(request: Request, exc: Exception) -> Response:
        from amsha.secrets import redact

        message = redact(f"{type(exc).__name__}: {exc}")
        code = 400 if isinstance(exc, StateError | ValueError) and "cursor" in str(exc) else 500
        if _wants_json(request):
            return JSONResponse({"error": message}, code)
        return render("error.html", status_code=code, code=code, message=message)

    routes = [
        Route("/", runs_page),
        Route("/metrics", metrics_page),
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/diff", diff_page),
        Route("/runs/{run_id}/timeline", timeline_fragment),
        Route("/api", api_index),
        Route("/api/runs", api_runs),
        Route("/api/runs/{run_id}", api_run),
        Route("/api/runs/{run_id}/events", api_events),
        Route("/api/runs/{run_id}/stream", api_stream),
        Route("/api/runs/{run_id}/cancel", api_cancel, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            RunNotFoundError: not_found,
            StateNotFoundError: not_found,
            HTTPException: not_found,
            AmshaError: store_error,
        },
    )
    app.state.source = source
    app.add_middleware(_Guard, token=token, loopback_only=loopback_only)
    return app


# ---- the guard: host check, token, security headers -------------------------------------


class _Guard:
    """Every request: a loopback ``Host`` (unless serving another address), the token when
    one is set, and headers that keep the pages from being framed or running foreign code."""

    def __init__(self, app: ASGIApp, *, token: str | None, loopback_only: bool) -> None:
        self.app = app
        self.token = token
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.loopback_only and _hostname(headers.get("host", "")) not in LOOPBACK_NAMES:
            await _plain(send, 421, "amsha ui answers only to a loopback Host (127.0.0.1 or localhost)")
            return
        port = (scope.get("server") or ("", 0))[1]
        cookie_name = f"amsha_ui_token_{port}"
        if self.token:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            given = _bearer(headers.get("authorization", "")) or _cookie(headers.get("cookie", ""), cookie_name)
            if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
                pass
            elif "token" in query and hmac.compare_digest(query["token"].encode(), self.token.encode()):
                if scope["method"] == "GET" and not scope["path"].startswith("/api"):
                    # First visit from the printed URL: keep the token in a cookie, drop it from the address.
                    rest = urlencode({k: v for k, v in query.items() if k != "token"})
                    location = scope["path"] + (f"?{rest}" if rest else "")
                    await _plain(
                        send,
                        303,
                        "token accepted",
                        extra=[
                            (b"location", location.encode("latin-1")),
                            (
                                b"set-cookie",
                                f"{cookie_name}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1"),
                            ),
                        ],
                    )
                    return
            else:
                await _plain(
                    send,
                    401,
                    "this amsha ui needs its token: open the URL it printed, or send Authorization: Bearer TOKEN",
                )
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if not scope["path"].startswith("/static"):
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _bearer(value: str) -> str | None:
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest.strip() else None


def _cookie(header: str, name: str) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---- server-sent events -------------------------------------------------------------------


async def _sse(source: RunSource, run_id: str, from_seq: int) -> AsyncIterator[str]:
    """The live stream: one message per event, a comment every few seconds while idle (so
    proxies and browsers keep the connection), and a final ``end`` message."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=10_000)

    async def pump() -> None:
        try:
            async for event in source.tail(run_id, from_seq):
                await queue.put(event)
        finally:
            await queue.put(None)

    task = asyncio.create_task(pump())
    try:
        yield "retry: 2000\n: connected\n\n"
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                yield ": idle\n\n"
                continue
            if event is None:
                break
            yield f"id: {int(event['seq'])}\nevent: amsha\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
        if task.done() and task.exception() is not None:
            yield f"event: error\ndata: {json.dumps({'error': type(task.exception()).__name__})}\n\n"
        record = await run_in_threadpool(source.run, run_id)
        yield f"event: end\ndata: {json.dumps({'status': record.status})}\n\n"
    finally:
        task.cancel()


# ---- helpers for the pages ------------------------------------------------------------------


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise HTTPException(400, f"?{name} must be an integer, got {raw!r}") from None


def _filters(request: Request, default_limit: int) -> dict[str, Any]:
    status = (request.query_params.get("status") or "").upper() or None
    if status is not None and status not in STATUSES:
        raise HTTPException(400, f"?status must be one of {', '.join(STATUSES)}, got {status!r}")
    limit = max(1, min(MAX_PAGE, _int(request, "limit", default_limit)))
    return {
        "status": status,
        "q": (request.query_params.get("q") or "").strip()[:200] or None,
        "before": request.query_params.get("before") or None,
        "limit": limit,
        "limit_given": bool(request.query_params.get("limit")),
    }


def _query(filters: dict[str, Any]) -> dict[str, str]:
    """The filters to carry to the next page's address (the page size when it was given)."""
    query = {k: str(filters[k]) for k in ("status", "q") if filters.get(k)}
    if filters.get("limit_given"):
        query["limit"] = str(filters["limit"])
    return query


def _first_url(filters: dict[str, Any]) -> str | None:
    if not filters.get("before"):
        return None
    q = urlencode(_query(filters))
    return "?" + q if q else "./"


def _run_row(record: RunRecord, now: float) -> dict[str, Any]:
    total = (record.metrics or {}).get("total") or {}
    return {
        "run": record,
        "duration": run_duration(record, now),
        "input_tokens": total.get("input_tokens"),
        "output_tokens": total.get("output_tokens"),
        "estimated": bool(total.get("tokens_estimated")),
        "retries": total.get("retries"),
        "errors": total.get("errors"),
        "calls": total.get("calls"),
        "ttft": (record.metrics or {}).get("ttft_s"),
    }


def _run_charts(record: RunRecord, calls: list[Any]) -> list[Any]:
    if not calls:
        return []
    labels = [f"{c.task or '-'} #{i + 1}" for i, c in enumerate(calls)]
    charts = [
        bar_chart("Latency per LLM call", labels, [("latency", [c.latency_s or c.duration for c in calls])], unit="s"),
        bar_chart("Time to first token per LLM call", labels, [("TTFT", [c.ttft_s for c in calls])], unit="s"),
        bar_chart(
            "Tokens per LLM call",
            labels,
            [
                ("in", [float((c.usage or {}).get("input_tokens") or 0) for c in calls]),
                ("out", [float((c.usage or {}).get("output_tokens") or 0) for c in calls]),
            ],
            unit="tokens",
        ),
    ]
    tasks: dict[str, dict[str, float]] = {}
    first_ttft: dict[str, float | None] = {}
    for c in calls:
        t = tasks.setdefault(c.task or "-", {"in": 0.0, "out": 0.0, "latency": 0.0})
        first_ttft.setdefault(c.task or "-", c.ttft_s)
        t["in"] += float((c.usage or {}).get("input_tokens") or 0)
        t["out"] += float((c.usage or {}).get("output_tokens") or 0)
        t["latency"] += float(c.latency_s or c.duration or 0)
    names = list(tasks)
    charts.append(
        bar_chart(
            "Tokens per task",
            names,
            [("in", [tasks[n]["in"] for n in names]), ("out", [tasks[n]["out"] for n in names])],
            unit="tokens",
        )
    )
    charts.append(
        bar_chart("LLM latency per task", names, [("latency", [tasks[n]["latency"] for n in names])], unit="s")
    )
    charts.append(  # the task's first call: how long the task waited for its first token
        bar_chart("Time to first token per task", names, [("TTFT", [first_ttft[n] for n in names])], unit="s")
    )
    return charts


def _across_charts(runs: list[RunRecord]) -> list[Any]:
    if not runs:
        return []
    labels = [r.run_id for r in runs]
    ticks = [r.run_id[-8:] for r in runs]  # the run id's random tail; the tooltip has it whole
    metrics = [r.metrics or {} for r in runs]
    totals = [m.get("total") or {} for m in metrics]
    charts = [
        bar_chart("Run latency", labels, [("latency", [m.get("latency_s") for m in metrics])], unit="s", ticks=ticks),
        bar_chart("Time to first token", labels, [("TTFT", [m.get("ttft_s") for m in metrics])], unit="s", ticks=ticks),
        bar_chart(
            "Tokens per run",
            labels,
            [("in", [t.get("input_tokens") for t in totals]), ("out", [t.get("output_tokens") for t in totals])],
            unit="tokens",
            ticks=ticks,
        ),
    ]
    per_call_latency: list[float | None] = []
    per_call_ttft: list[float | None] = []
    for m in metrics:
        calls = m.get("calls") or []
        lat = [c.get("latency_s") for c in calls if c.get("latency_s") is not None]
        ttft = [c.get("ttft_s") for c in calls if c.get("ttft_s") is not None]
        per_call_latency.append(sum(lat) / len(lat) if lat else None)
        per_call_ttft.append(sum(ttft) / len(ttft) if ttft else None)
    charts.append(
        bar_chart(
            "Mean per LLM call", labels, [("latency", per_call_latency), ("TTFT", per_call_ttft)], unit="s", ticks=ticks
        )
    )
    tasks: dict[str, list[float]] = {}
    for m in metrics:
        for name, t in (m.get("tasks") or {}).items():
            tasks.setdefault(name, []).append(float(t.get("total_tokens") or 0))
    if tasks:
        names = sorted(tasks)
        charts.append(
            bar_chart(
                "Mean tokens per task",
                names,
                [("tokens", [sum(tasks[n]) / len(tasks[n]) for n in names])],
                unit="tokens",
            )
        )
    return charts


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _short(text: Any, limit: int = 120) -> str:
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"
