"""A reference orchestrator, written as a third party would: each task one streamed call of
Amsha's LLM for its agent, inside the task's scope."""

from __future__ import annotations

from typing import Any

from amsha import Message, hookimpl
from amsha.orchestrator import RunContext


class ReferenceOrchestrator:
    """Runs ``run.task_names`` in order, one LLM stream each."""

    name = "reference"

    def messages(self, run: RunContext, name: str) -> list[Message]:
        task = run.registry.task(name)
        agent = run.registry.agent(task.agent)
        context = run.context_for(name)
        system = f"You are {agent.role}. Your goal: {agent.goal}."
        user = task.description  # placeholders are filled by Amsha from the run's inputs
        for other, output in context.items():
            user += f"\n\nOutput of {other}:\n{output}"
        return [Message("system", system), Message("user", user)]

    async def answer(self, run: RunContext, scope: Any, name: str) -> str:
        stream = scope.llm().astream(self.messages(run, name))
        async for _ in stream:
            pass
        assert stream.response is not None
        return stream.response.text

    async def aexecute(self, run: RunContext) -> None:
        for name in run.task_names:
            async with run.task(name) as scope:
                scope.output = await self.answer(run, scope, name)

    def close(self) -> None:
        pass


class Plugin:
    """Registers orchestrator ``reference`` built from ``cls``."""

    def __init__(self, cls: type[ReferenceOrchestrator] = ReferenceOrchestrator, name: str = "reference") -> None:
        self.__name__ = f"kit-orchestrator-{name}"
        self.cls, self.name = cls, name

    @hookimpl
    def amsha_register_orchestrators(self, register: Any) -> None:
        register(self.name, lambda ctx: self.cls(), description="the kit's reference orchestrator")
