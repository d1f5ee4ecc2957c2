"""The ``direct`` orchestrator: framework-free; each task is one LLM call.

The agent's role, goal and backstory make the system prompt; the task's description and
expected output, plus the outputs of the tasks its ``context`` names, make the user
message. A task with ``output_schema`` asks for structured output and stores the parsed
JSON. Tasks run exactly as the client named them, in that order; nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from ..config import AgentSpec, TaskSpec
from ..orchestrator import BaseOrchestrator, RunContext
from ..plugins import BackendContext
from ..provider import Message

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


class DirectOrchestrator(BaseOrchestrator):
    """One streamed LLM call per task, natively async (cancel closes the stream at once)."""

    name = "direct"

    async def aexecute(self, run: RunContext) -> None:
        for name in run.task_names:
            task = run.registry.task(name)
            agent = run.registry.agent(task.agent)
            async with run.task(name) as scope:
                messages = task_messages(agent, task, run.context_for(name))
                response_format = {"name": name, "schema": task.output_schema} if task.output_schema else None
                stream = scope.llm().astream(messages, response_format=response_format)
                async for _chunk in stream:
                    pass
                response = stream.response
                assert response is not None
                if response_format is not None:
                    scope.output = json.loads(_unfence(response.text))
                else:
                    scope.output = response.text


def _unfence(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`").removeprefix("json")
    return stripped.strip()


def build(ctx: BackendContext) -> DirectOrchestrator:
    return DirectOrchestrator()
