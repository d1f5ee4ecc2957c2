"""``AmshaChatModel``: a langchain-core chat model backed by an Amsha :class:`~amsha.LLM`.

Every call goes through Amsha's LLM wrapper (the proxy rule), so it gets Amsha's single
retry policy, token counting, timing, cancellation and events, and any installed Amsha
provider can drive LangChain or LangGraph code::

    from amsha import ExecutionSession
    from amsha_langgraph import AmshaChatModel

    model = AmshaChatModel(llm=ExecutionSession("amsha.yaml").llm())
    print(model.invoke("Say hi").content)

It is an ordinary chat model: ``invoke``/``stream``/``batch`` and their async twins,
``bind_tools`` (LangChain tool calls map to Amsha's and back; ``ToolMessage`` becomes Amsha's
``tool`` message), ``with_structured_output``, ``usage_metadata`` and the
``on_llm_new_token`` callback on every streamed token. Amsha's typed errors
(:mod:`amsha.errors`) propagate unchanged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal

from amsha import LLM, LLMChunk, LLMResponse, Message, ToolCall, ToolSpec, Usage
from amsha.errors import InputError
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr

__all__ = ["AmshaChatModel", "from_langchain_messages", "to_langchain_message"]

LLMResolver = Callable[[Mapping[str, Any]], LLM]
"""Picks the Amsha LLM for one call from the call's callback metadata (used by the
orchestrator to link each call to the graph node that makes it)."""


_AI_BOOKKEEPING = frozenset({"tool_use", "tool_call", "tool_call_chunk", "function_call", "reasoning", "thinking"})
"""Content blocks of an AI message that carry no text to send back: tool calls travel in
``tool_calls``, and a model's reasoning is not part of the conversation sent to another."""


def _text(content: Any, where: str = "the message", *, ai: bool = False) -> str:
    """The text of a message's content. A block Amsha cannot send (an image, audio, a file)
    raises :class:`InputError` naming the message and block: Amsha's messages carry text,
    and a dropped image would change the question without a word."""
    if isinstance(content, str):
        return content
    parts = []
    for i, block in enumerate(content or []):
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif not (ai and kind in _AI_BOOKKEEPING):
            raise InputError(
                f"AmshaChatModel: {where} has a content block of type {kind!r} (block {i}); Amsha messages "
                "carry text only, so send text blocks (or a string)"
            )
    return "".join(parts)


def from_langchain_messages(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages as Amsha :class:`~amsha.Message` objects (tool calls and tool
    results included)."""
    out: list[Message] = []
    for n, m in enumerate(messages):
        where = f"messages[{n}] ({type(m).__name__})"
        if isinstance(m, SystemMessage):
            out.append(Message("system", _text(m.content, where)))
        elif isinstance(m, HumanMessage):
            out.append(Message("user", _text(m.content, where), name=m.name))
        elif isinstance(m, AIMessage):
            calls = [
                ToolCall(id=c.get("id") or f"call_{i}", name=c["name"], arguments=json.dumps(c.get("args") or {}))
                for i, c in enumerate(m.tool_calls)
            ]
            text = _text(m.content, where, ai=True)
            out.append(Message("assistant", text or (None if calls else ""), tool_calls=calls or None))
        elif isinstance(m, ToolMessage):
            # Sent as it is, as langchain-openai sends it: the Chat Completions protocol has
            # no error flag, and a failed tool's text (LangGraph's "Error: ...") says so.
            content = _text(m.content, where)
            if m.status == "error" and not content:
                content = "error"
            out.append(Message("tool", content, tool_call_id=m.tool_call_id))
        elif isinstance(m, ChatMessage) and m.role in ("system", "user", "assistant"):
            out.append(Message(m.role, _text(m.content, where, ai=m.role == "assistant")))  # type: ignore[arg-type]
        else:
            raise InputError(
                f"AmshaChatModel: cannot send a {type(m).__name__} (role {getattr(m, 'role', m.type)!r}); "
                "use system, human, ai or tool messages"
            )
    return out


def _usage_metadata(usage: Usage | None) -> UsageMetadata | None:
    if usage is None:
        return None
    meta = UsageMetadata(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, total_tokens=usage.total_tokens
    )
    if usage.cached_input_tokens is not None:
        meta["input_token_details"] = {"cache_read": usage.cached_input_tokens}
    if usage.reasoning_tokens is not None:
        meta["output_token_details"] = {"reasoning": usage.reasoning_tokens}
    return meta


def to_langchain_message(response: LLMResponse) -> AIMessage:
    """An Amsha :class:`~amsha.LLMResponse` as a LangChain ``AIMessage``."""
    tool_calls = []
    invalid = []
    for call in response.tool_calls:
        try:
            args = json.loads(call.arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments are not a JSON object")
            tool_calls.append({"name": call.name, "args": args, "id": call.id, "type": "tool_call"})
        except ValueError as exc:
            invalid.append(
                {
                    "name": call.name,
                    "args": call.arguments,
                    "id": call.id,
                    "error": str(exc),
                    "type": "invalid_tool_call",
                }
            )
    return AIMessage(
        content=response.text,
        tool_calls=tool_calls,
        invalid_tool_calls=invalid,
        usage_metadata=_usage_metadata(response.usage),
        response_metadata=_response_metadata(response),
    )


def _response_metadata(response: LLMResponse) -> dict[str, Any]:
    meta: dict[str, Any] = {"finish_reason": response.finish_reason, "model_provider": "amsha"}
    if response.model:
        meta["model_name"] = response.model
    if response.usage is not None and response.usage.estimated:
        meta["usage_estimated"] = True
    return meta


def _tool_spec(tool: Any) -> ToolSpec:
    if isinstance(tool, ToolSpec):
        return tool
    if isinstance(tool, dict) and "parameters" in tool and "name" in tool and "type" not in tool:
        return ToolSpec(name=tool["name"], description=tool.get("description", ""), parameters=tool["parameters"])
    fn = convert_to_openai_tool(tool)["function"]
    return ToolSpec(
        name=fn["name"],
        description=fn.get("description", ""),
        parameters=fn.get("parameters") or {"type": "object", "properties": {}},
    )


class AmshaChatModel(BaseChatModel):
    """A langchain-core chat model whose every call goes through an Amsha ``LLM``.

    Give it ``llm`` (an :class:`amsha.LLM`, for example ``session.llm("fast")``), or
    ``config`` (an Amsha config dict) and optionally ``llm_name`` to build one. Call
    parameters (``temperature``, ``max_tokens``, ``stop``, ``seed``, ``model``, and
    ``response_format`` as ``{"name": ..., "schema": ...}``) pass through to the request.

    The usual chat-model constructor arguments mean what they mean elsewhere: ``stop`` (or
    ``stop_sequences``); ``max_retries`` (Amsha's retry policy for this model's calls, the
    rest of the policy as configured); ``timeout`` (seconds, sent with each request: a
    provider that talks to a server waits that long, as with its ``timeout_s`` option);
    ``streaming=True`` (``invoke`` streams, so callbacks get every token). ``api_key`` is
    refused: Amsha reads keys from the environment variable its config names
    (``provider.options.api_key_env``), so a key never sits in code or in a model's fields.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    llm: Any = Field(default=None, exclude=True, description="the amsha.LLM every call goes through")
    config: dict[str, Any] | None = Field(default=None, description="an Amsha config to build the LLM from")
    llm_name: str | None = Field(default=None, description="the named LLM (`llms:` key) of `config`")
    model: str | None = Field(default=None, description="model override sent with each request")
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    max_retries: int | None = Field(default=None, ge=0, le=100, description="retries after the first attempt")
    timeout: float | None = Field(default=None, gt=0, description="seconds each request may take (sent with it)")
    streaming: bool = Field(default=False, description="invoke() streams (callbacks get each token)")
    resolver: Any = Field(default=None, exclude=True, description="picks the LLM per call from callback metadata")

    _session: Any = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        for key in ("api_key", "openai_api_key"):
            if data.get(key) is not None:
                raise InputError(
                    f"AmshaChatModel does not take {key}: Amsha reads the key from the environment variable "
                    "named in its config (provider.options.api_key_env, OPENAI_API_KEY by default), so set "
                    "that variable instead"
                )
        super().__init__(**data)

    def model_post_init(self, context: Any) -> None:
        # Built now, so the config (and Amsha's environment overrides) is read at construction.
        if self.llm is None and self.resolver is None:
            self._base_llm()

    @property
    def _llm_type(self) -> str:
        return "amsha"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        base = self._base_llm()
        return {"llm": base.name, "provider": base.provider_name, "model": self.model or base.model}

    @property
    def model_name(self) -> str | None:
        """The model this chat model asks for (its ``model``, else its LLM's)."""
        return self.model or self._base_llm().model

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        base = self._base_llm()
        params["ls_provider"] = f"amsha-{base.provider_name}"
        params["ls_model_name"] = kwargs.get("model") or self.model or base.model or base.name
        return params

    def _base_llm(self) -> LLM:
        if self.llm is None and self.resolver is not None:
            return self._llm(None)  # resolver-only: the LLM of the call in progress
        if self.llm is None:
            from amsha import ExecutionSession

            self._session = ExecutionSession(self.config or {})
            self.llm = self._session.llm(self.llm_name)
        assert isinstance(self.llm, LLM)
        return self.llm

    def _llm(self, run_manager: Any) -> LLM:
        if self.resolver is not None:
            metadata = getattr(run_manager, "metadata", None)
            if metadata is None:
                metadata = ensure_config().get("metadata") or {}
            llm: LLM = self.resolver(metadata)
        else:
            llm = self._base_llm()
        if self.max_retries is not None and llm.retry.max_retries != self.max_retries:
            llm = llm.with_retry(max_retries=self.max_retries)
        return llm

    def _params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for key in ("model", "temperature", "max_tokens"):
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        if self.timeout is not None:
            params["timeout_s"] = self.timeout
        stops = stop or self.stop
        if stops:
            params["stop"] = list(stops)
        for key, value in kwargs.items():
            if key in ("stream", "ls_structured_output_format") or value is None:
                continue
            if key == "tools":
                params["tools"] = [_tool_spec(t) for t in value]
            else:
                params[key] = value
        return params

    # ---- calls --------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        response = self._llm(run_manager).generate(from_langchain_messages(messages), **self._params(stop, kwargs))
        return ChatResult(generations=[ChatGeneration(message=to_langchain_message(response))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        llm = self._llm(run_manager)
        response = await llm.agenerate(from_langchain_messages(messages), **self._params(stop, kwargs))
        return ChatResult(generations=[ChatGeneration(message=to_langchain_message(response))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stream = self._llm(run_manager).stream(from_langchain_messages(messages), **self._params(stop, kwargs))
        with stream:
            for chunk in stream:
                out = _chunk(chunk)
                if out is not None:
                    if run_manager is not None:
                        run_manager.on_llm_new_token(chunk.text, chunk=out)
                    yield out
        if stream.response is not None:
            yield _final_chunk(stream.response)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        llm = self._llm(run_manager)
        stream = llm.astream(from_langchain_messages(messages), **self._params(stop, kwargs))
        async with stream:
            async for chunk in stream:
                out = _chunk(chunk)
                if out is not None:
                    if run_manager is not None:
                        await run_manager.on_llm_new_token(chunk.text, chunk=out)
                    yield out
        if stream.response is not None:
            yield _final_chunk(stream.response)

    # ---- tools and structured output ------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` (LangChain tools, pydantic models, functions, OpenAI-style dicts)
        to the model. ``tool_choice``: ``"auto"``, ``"none"``, ``"any"``/``"required"``/
        ``True`` (some tool must be called) or a tool's name."""
        specs = [_tool_spec(t) for t in tools]
        choice: str | dict[str, Any] | None
        if tool_choice is True or tool_choice == "any":
            choice = "required"
        elif isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required"):
            choice = {"type": "function", "function": {"name": tool_choice}}
        else:
            choice = tool_choice or None
        if choice is not None:
            kwargs["tool_choice"] = choice
        return self.bind(tools=specs, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Answers parsed into ``schema`` (a pydantic model, a TypedDict or a JSON schema).

        ``json_schema`` (the default) asks through Amsha's ``response_format`` (enforced by
        providers that can, asked for in words by the others); ``function_calling`` forces a
        tool call; ``json_mode`` asks for any JSON object. ``strict`` is passed on in the
        response format for providers that enforce schemas strictly."""
        if kwargs:
            raise InputError(f"AmshaChatModel.with_structured_output: unknown arguments {sorted(kwargs)}")
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw)
        fmt: dict[str, Any]
        pydantic_model = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "json_mode":
            fmt = {"type": "json_object"}  # any JSON object, as OpenAI's JSON mode
        else:
            json_schema = convert_to_json_schema(schema)
            fmt = {"name": json_schema.get("title", "output"), "schema": json_schema}
            if strict is not None:
                fmt["strict"] = strict
        parser: Runnable[Any, Any] = (
            PydanticOutputParser(pydantic_object=schema) if pydantic_model else JsonOutputParser()  # type: ignore[arg-type]
        )
        llm = self.bind(
            response_format=fmt,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
        )
        if include_raw:
            assign = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
            none = RunnablePassthrough.assign(parsed=lambda _: None)
            return RunnableMap(raw=llm) | assign.with_fallbacks([none], exception_key="parsing_error")
        return llm | parser

    def close(self) -> None:
        """Close the session this model built for itself (when built from ``config``)."""
        if self._session is not None:
            self._session.close()
            self._session = None


def _chunk(chunk: LLMChunk) -> ChatGenerationChunk | None:
    if not chunk.text and not chunk.tool_calls:
        return None
    tool_chunks = [
        {"name": d.name, "args": d.arguments or None, "id": d.id, "index": d.index, "type": "tool_call_chunk"}
        for d in chunk.tool_calls or ()
    ]
    return ChatGenerationChunk(message=AIMessageChunk(content=chunk.text, tool_call_chunks=tool_chunks))


def _final_chunk(response: LLMResponse) -> ChatGenerationChunk:
    """The closing chunk: usage and response metadata (the text came before)."""
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content="",
            usage_metadata=_usage_metadata(response.usage),
            response_metadata=_response_metadata(response),
            chunk_position="last",
        ),
        generation_info={"finish_reason": response.finish_reason},
    )
