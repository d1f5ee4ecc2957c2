"""The ``direct`` orchestrator: framework-free; each task is one LLM call.

The agent's role, goal and backstory make the system prompt; the task's description and
expected output, plus the outputs of the tasks its ``context`` names, make the user
message. A task with ``output_schema`` asks for structured output and stores the parsed
JSON. When the task or its agent has tools, the model may call them: each call is executed
(``tool.*`` events) and its result sent back, until the model answers without calling a
tool (at most ``max_tool_rounds`` times, an option). Tasks run exactly as the client named
them, in that order; nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config import AgentSpec, TaskSpec
from ..errors import ExecutionError
from ..llm import strip_fences
from ..orchestrator import BaseOrchestrator, RunContext, TaskScope
from ..plugins import BackendContext
from ..provider import LLMResponse, Message
from ..tools import tool_spec

__all__ = ["DirectOrchestrator", "task_messages"]


def task_messages(agent: AgentSpec, task: TaskSpec, context: dict[str, Any]) -> list[Message]:
    """The messages the direct orchestrator sends for ``task`` (public, for reuse)."""
    system = f"You are {agent.role}. {agent.backstory}".strip() + f"\nYour goal: {agent.goal}"
    user = task.description
    if task.expected_output:
        user += f"\n\nExpected output: {task.expected_output}"
    for name, output in context.items():
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        user += f"\n\nContext from task {name!r}:\n{text}"
    return [Message("system", system), Message("user", user)]


class DirectOptions(BaseModel):
    """Options of the ``direct`` orchestrator."""

    model_config = ConfigDict(extra="forbid")
    max_tool_rounds: int = Field(8, ge=1, description="tool-call round trips allowed per task")


class DirectOrchestrator(BaseOrchestrator):
    """One streamed LLM call per task, natively async (cancel closes the stream at once)."""

    name = "direct"

    def __init__(self, options: DirectOptions | None = None) -> None:
        self.options = options or DirectOptions()

    async def aexecute(self, run: RunContext) -> None:
        for name in run.task_names:
            task = run.registry.task(name)
            agent = run.registry.agent(task.agent)
            async with run.task(name) as scope:
                messages = task_messages(agent, task, run.context_for(name))
                response_format = {"name": name, "schema": task.output_schema} if task.output_schema else None
                response = await self._answer(run, scope, messages, [*agent.tools, *task.tools], response_format)
                if response_format is not None:
                    scope.output = json.loads(strip_fences(response.text))
                else:
                    scope.output = response.text

    async def _answer(
        self,
        run: RunContext,
        scope: TaskScope,
        messages: list[Message],
        tool_names: list[str],
        response_format: dict[str, Any] | None,
    ) -> LLMResponse:
        llm = scope.llm()
        tools = {n: run.tools[n] for n in dict.fromkeys(tool_names)}
        specs = [tool_spec(n, fn) for n, fn in tools.items()] or None
        for _round in range(self.options.max_tool_rounds + 1):
            stream = llm.astream(messages, tools=specs, response_format=response_format)
            async for _chunk in stream:
                pass
            response = stream.response
            assert response is not None
            if not response.tool_calls:
                return response
            messages.append(Message("assistant", response.text or None, tool_calls=response.tool_calls))
            for call in response.tool_calls:
                run.check_cancelled()
                messages.append(
                    Message(
                        "tool",
                        await run.call_tool(scope, tools, call.name, call.id, call.arguments),
                        tool_call_id=call.id,
                    )
                )
        raise ExecutionError(
            f"task {scope.name!r}: the model still called tools after {self.options.max_tool_rounds} rounds"
        )


def build(ctx: BackendContext) -> DirectOrchestrator:
    return DirectOrchestrator(ctx.options)
