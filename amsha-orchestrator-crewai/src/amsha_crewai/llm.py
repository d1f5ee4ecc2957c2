"""``AmshaCrewLLM``: a CrewAI custom LLM (on CrewAI's public ``BaseLLM``) whose every call is
made by Amsha's :class:`~amsha.LLM` (the proxy rule).

So retry, token counting, timing, cancel and events are Amsha's, and any installed Amsha
provider drives a crew. CrewAI wraps a custom LLM's ``call`` in a rate-limit retry of its own
(3 attempts); this class opts out of it, so the number of attempts is exactly what Amsha's
retry policy says. Messages are handed to the provider clean: keys CrewAI adds for itself
(``cache_breakpoint``, ``raw_tool_call_parts``, ``files``) are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from amsha import LLM, Message, ToolCall, ToolSpec
from amsha.errors import StructuredOutputError
from amsha.llm import strip_fences
from crewai.llms.base_llm import BaseLLM
from pydantic import BaseModel, PrivateAttr

__all__ = ["AmshaCrewLLM", "to_messages", "to_tool_specs"]

#: Resolves the Amsha LLM for one call from CrewAI's ``from_task`` / ``from_agent``.
Resolver = Callable[[Any, Any], LLM]


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def to_messages(messages: str | list[dict[str, Any]]) -> list[Message]:
    """CrewAI's messages (a string, or OpenAI-style dicts with CrewAI's extra keys) as Amsha's."""
    if isinstance(messages, str):
        return [Message("user", messages)]
    out: list[Message] = []
    for m in messages:
        role = m.get("role", "user")
        calls = m.get("tool_calls")
        tool_calls = None
        if calls:
            tool_calls = []
            for c in calls:
                fn = c.get("function", c) if isinstance(c, dict) else c.function
                name = fn.get("name") if isinstance(fn, dict) else fn.name
                args = fn.get("arguments", "{}") if isinstance(fn, dict) else fn.arguments
                call_id = c.get("id") if isinstance(c, dict) else c.id
                if not isinstance(args, str):
                    args = json.dumps(args)
                tool_calls.append(ToolCall(id=str(call_id), name=str(name), arguments=args or "{}"))
        out.append(
            Message(
                role if role in ("system", "user", "assistant", "tool") else "user",
                _text(m.get("content")),
                tool_calls=tool_calls,
                tool_call_id=m.get("tool_call_id"),
            )
        )
    return out


def to_tool_specs(tools: list[dict[str, Any]] | None) -> list[ToolSpec] | None:
    """CrewAI's OpenAI-format tool schemas as Amsha :class:`ToolSpec`."""
    if not tools:
        return None
    specs = []
    for t in tools:
        fn = t.get("function", t)
        specs.append(
            ToolSpec(
                name=fn["name"],
                description=fn.get("description", ""),
                parameters=fn.get("parameters") or {"type": "object", "properties": {}},
            )
        )
    return specs


class AmshaCrewLLM(BaseLLM):
    """A CrewAI LLM backed by Amsha's LLM.

    ``AmshaCrewLLM.wrap(llm)`` makes one for an Amsha :class:`~amsha.LLM` (use it in any
    CrewAI code); the ``crewai`` orchestrator passes a ``resolver`` instead, which gives each
    call the run's LLM for the calling task, so its events land under that task.
    """

    llm_type: str = "amsha"
    _amsha: LLM | None = PrivateAttr(default=None)
    _resolver: Resolver | None = PrivateAttr(default=None)
    _on_call: Callable[[bool], None] | None = PrivateAttr(default=None)

    @classmethod
    def wrap(
        cls,
        llm: LLM | None = None,
        *,
        resolver: Resolver | None = None,
        on_call: Callable[[bool], None] | None = None,
        model: str | None = None,
    ) -> AmshaCrewLLM:
        """An adapter for ``llm`` (or for the LLM ``resolver(task, agent)`` returns per call);
        ``on_call(after)`` runs before (``after=False``) and after (``after=True``) every call:
        the orchestrator orders CrewAI's events and checks for cancel there."""
        if llm is None and resolver is None:
            raise ValueError("AmshaCrewLLM.wrap needs an LLM or a resolver")
        name = model or (llm.model if llm is not None else None) or (llm.provider_name if llm is not None else "amsha")
        self = cls(model=name or "amsha", provider="amsha")
        self._amsha = llm
        self._resolver = resolver
        self._on_call = on_call
        return self

    def _llm(self, from_task: Any, from_agent: Any) -> LLM:
        if self._resolver is not None:
            return self._resolver(from_task, from_agent)
        assert self._amsha is not None, "AmshaCrewLLM built without AmshaCrewLLM.wrap"
        return self._amsha

    def supports_function_calling(self) -> bool:
        llm = self._amsha
        if llm is None and self._resolver is not None:
            llm = self._resolver(None, None)
        return bool(llm is not None and llm.provider.capabilities.tools)

    def supports_stop_words(self) -> bool:
        return True

    def get_input_tokens_count(
        self,
        messages: str | list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> int:
        """CrewAI's preflight estimate (one token per four characters), without its warning:
        the figures Amsha reports come from the provider's usage."""
        if isinstance(messages, str):
            chars = len(messages)
        else:
            chars = sum(len(_text(m.get("content")) or "") for m in messages)
        return (chars + 3) // 4

    def _params(self, tools: list[dict[str, Any]] | None, response_model: type[BaseModel] | None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        specs = to_tool_specs(tools)
        if specs:
            params["tools"] = specs
        stop = self.stop_sequences
        if stop:
            params["stop"] = list(stop)
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if response_model is not None:
            params["response_format"] = {
                "name": response_model.__name__,
                "schema": response_model.model_json_schema(),
            }
        return params

    def _result(
        self,
        response: Any,
        available_functions: dict[str, Any] | None,
        response_model: type[BaseModel] | None,
    ) -> Any:
        if response.tool_calls:
            if available_functions is None:
                # CrewAI's native tool calling: it executes the calls and sends results back.
                return [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in response.tool_calls
                ]
            call = response.tool_calls[0]
            fn = available_functions.get(call.name)
            if fn is not None:
                return fn(**(call.parsed_arguments() or {}))
        text = response.text or ""
        if response_model is not None:
            try:
                return response_model.model_validate_json(strip_fences(text))
            except ValueError as exc:
                raise StructuredOutputError(
                    f"the model's answer does not match {response_model.__name__}: {exc}"
                ) from None
        return text

    def _end(
        self,
        response: Any,
        available_functions: dict[str, Any] | None,
        response_model: type[BaseModel] | None,
    ) -> Any:
        """What both call forms do last: the after-hook, then the answer in CrewAI's terms."""
        assert response is not None
        self._hook(after=True)
        return self._result(response, available_functions, response_model)

    def _begin(
        self,
        messages: str | list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        response_model: type[BaseModel] | None,
        from_task: Any,
        from_agent: Any,
    ) -> tuple[LLM, list[Message], dict[str, Any]]:
        """What both call forms do first: the before-hook, the LLM, the request's parts."""
        self._hook()
        return self._llm(from_task, from_agent), to_messages(messages), self._params(tools, response_model)

    def _hook(self, after: bool = False) -> None:
        if self._on_call is not None:
            self._on_call(after)

    def call(
        self,
        messages: str | list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: type[BaseModel] | None = None,
    ) -> Any:
        """One call through Amsha's LLM, streamed (tokens reach the run as they arrive)."""
        llm, msgs, params = self._begin(messages, tools, response_model, from_task, from_agent)
        stream = llm.stream(msgs, **params)
        for _chunk in stream:
            pass
        return self._end(stream.response, available_functions, response_model)

    async def acall(
        self,
        messages: str | list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: type[BaseModel] | None = None,
    ) -> Any:
        """Async twin of :meth:`call`."""
        llm, msgs, params = self._begin(messages, tools, response_model, from_task, from_agent)
        stream = llm.astream(msgs, **params)
        async for _chunk in stream:
            pass
        return self._end(stream.response, available_functions, response_model)

    # CrewAI wraps a subclass's call/acall in its own rate-limit retry unless marked as
    # already wrapped. Amsha's LLM retries (once, by its policy); a second layer on top would
    # multiply the attempts, so these are marked.
    call._crewai_rate_limit_wrapped = True  # type: ignore[attr-defined]
    acall._crewai_rate_limit_wrapped = True  # type: ignore[attr-defined]

