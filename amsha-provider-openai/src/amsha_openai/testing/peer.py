"""The Chat Completions protocol taught to :class:`amsha.testing.HTTPPeer`, so that
``ProviderContract``'s transport checks (and any test) can drive an OpenAI-compatible
provider against a peer whose every byte the test controls::

    peer = HTTPPeer(chat_completions_responder).start()
    provider = OpenAIProvider({"base_url": f"{peer.url}/v1"}, model="m")

Answers: the text ``Hello from the peer.`` (cut at the request's ``stop`` sequences); a call
of ``magic_function`` with ``{"input": 3}`` when the last user message asks for it and tools
are offered; the JSON ``{"contract_given_name": "Ada", "contract_age_years": 36}`` when a
``response_format`` is set. Streams are SSE, one event per word, with the usage chunk when
``stream_options.include_usage`` is set.
"""

from __future__ import annotations

import json
import time
from typing import Any

from amsha.testing import PeerReply, PeerRequest

__all__ = ["ANSWER", "chat_completions_responder"]

ANSWER = "Hello from the peer."


def chat_completions_responder(request: PeerRequest) -> PeerReply:
    """Answer a ``POST .../chat/completions`` request (see the module docstring)."""
    body = request.json()
    if not request.path.rstrip("/").endswith("/chat/completions") or not isinstance(body, dict):
        return PeerReply.json(
            {"error": {"message": f"unknown path {request.path}", "type": "invalid_request_error"}}, status=404
        )
    model = str(body.get("model"))
    messages = body.get("messages") or []
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    calls: list[dict[str, Any]] = []
    if body.get("tools") and "Call magic_function" in str(last.get("content")):
        calls = [
            {
                "id": "call_peer_0",
                "type": "function",
                "function": {"name": "magic_function", "arguments": '{"input": 3}'},
            }
        ]
        text = ""
    elif body.get("response_format"):
        text = json.dumps({"contract_given_name": "Ada", "contract_age_years": 36})
    else:
        text = ANSWER
    stops = body.get("stop") or []
    for stop in [stops] if isinstance(stops, str) else stops:
        if stop in text:
            text = text[: text.index(stop)]
    words = text.split(" ")
    pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)] if text else []
    prompt = sum(len(str(m.get("content") or "").split()) for m in messages)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": len(pieces) + len(calls),
        "total_tokens": prompt + len(pieces) + len(calls),
    }
    finish = "tool_calls" if calls else "stop"
    base = {"id": "chatcmpl-peer", "created": int(time.time()), "model": model}
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            message["tool_calls"] = calls
        return PeerReply.json(
            {
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }
        )
    chunk = {**base, "object": "chat.completion.chunk"}

    def event(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": p}) for p in pieces]
    events += [event({"tool_calls": [{"index": 0, **c}]}) for c in calls]
    events.append(event({}, finish))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**chunk, "choices": [], "usage": usage})
    return PeerReply.sse(events)
