"""The passive registry: agents, tasks and an optional pipeline order hint. No execution logic.

Loaded from config (``agents:``/``tasks:`` inline or as CrewAI-style ``agents.yaml`` /
``tasks.yaml``) or registered in code. ``{placeholders}`` in agent and task texts are filled
from a run's inputs, as CrewAI users expect.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Mapping
from typing import Any

from .config import AgentSpec, AmshaConfig, TaskSpec
from .errors import InputError

__all__ = ["Registry"]

_TEXT_FIELDS = {"agent": ("role", "goal", "backstory"), "task": ("description", "expected_output")}


class Registry:
    """Agents and tasks by name, plus an optional ``pipeline`` order hint."""

    def __init__(
        self,
        agents: Iterable[AgentSpec] = (),
        tasks: Iterable[TaskSpec] = (),
        pipeline: list[str] | None = None,
    ) -> None:
        self.agents: dict[str, AgentSpec] = {a.name: a for a in agents}
        self.tasks: dict[str, TaskSpec] = {t.name: t for t in tasks}
        self.pipeline = list(pipeline) if pipeline else None

    @classmethod
    def from_config(cls, config: AmshaConfig) -> Registry:
        return cls(config.agents.values(), config.tasks.values(), config.pipeline)

    def add_agent(self, name: str, role: str, goal: str, **fields: Any) -> AgentSpec:
        """Register an agent in code."""
        spec = AgentSpec(name=name, role=role, goal=goal, **fields)
        self.agents[name] = spec
        return spec

    def add_task(self, name: str, description: str, agent: str, **fields: Any) -> TaskSpec:
        """Register a task in code; its agent must already be registered."""
        if agent not in self.agents:
            raise InputError(
                f"task {name!r}: unknown agent {agent!r}; registered agents: {', '.join(self.agents) or 'none'}"
            )
        spec = TaskSpec(name=name, description=description, agent=agent, **fields)
        self.tasks[name] = spec
        return spec

    def agent(self, name: str) -> AgentSpec:
        try:
            return self.agents[name]
        except KeyError:
            raise InputError(f"unknown agent {name!r}; registered agents: {', '.join(self.agents) or 'none'}") from None

    def task(self, name: str) -> TaskSpec:
        try:
            return self.tasks[name]
        except KeyError:
            raise InputError(f"unknown task {name!r}; registered tasks: {', '.join(self.tasks) or 'none'}") from None

    def select(self, names: Iterable[str] | None) -> list[str]:
        """The tasks a run executes: exactly ``names`` in the given order, or, when the client
        names none, the pipeline hint (else every task in declaration order)."""
        if names is None:
            chosen = list(self.pipeline or self.tasks)
        else:
            chosen = list(names)
        for name in chosen:
            self.task(name)
        if not chosen:
            raise InputError("no tasks to run: the registry is empty and none were named")
        return chosen

    def placeholders(self) -> set[str]:
        """Every ``{name}`` used in agent and task texts."""
        found: set[str] = set()
        for kind, specs in (("agent", self.agents.values()), ("task", self.tasks.values())):
            for spec in specs:
                for field in _TEXT_FIELDS[kind]:
                    found.update(_fields(getattr(spec, field)))
        return found

    def render(self, inputs: Mapping[str, Any], task_names: Iterable[str] | None = None) -> Registry:
        """A copy with ``{placeholders}`` filled from ``inputs``. A placeholder with no input
        is an :class:`InputError` naming it and where it is (only for the tasks that run and
        their agents)."""
        wanted = set(task_names) if task_names is not None else set(self.tasks)
        agents_used = {self.tasks[t].agent for t in wanted if t in self.tasks}
        agents = [self._fill(a, "agent", inputs) if a.name in agents_used else a for a in self.agents.values()]
        tasks = [self._fill(t, "task", inputs) if t.name in wanted else t for t in self.tasks.values()]
        return Registry(agents, tasks, self.pipeline)

    @staticmethod
    def _fill(spec: Any, kind: str, inputs: Mapping[str, Any]) -> Any:
        updates = {}
        for field in _TEXT_FIELDS[kind]:
            text = getattr(spec, field)
            names = _fields(text)
            if not names:
                continue
            missing = sorted(n for n in names if n not in inputs)
            if missing:
                raise InputError(
                    f"{kind}s.{spec.name}.{field} uses {{{missing[0]}}} but no input {missing[0]!r} was given; "
                    f"pass it with --input {missing[0]}=VALUE or inputs={{{missing[0]!r}: ...}}"
                )
            updates[field] = _format(text, inputs)
        return spec.model_copy(update=updates) if updates else spec


def _fields(text: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(text) if f}
    except ValueError:
        return set()


def _format(text: str, inputs: Mapping[str, Any]) -> str:
    out = []
    for literal, field, _spec, _conv in string.Formatter().parse(text):
        out.append(literal)
        if field:
            value = inputs[field]
            out.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return "".join(out)
