"""Figures of orchestrator ``crewai`` (amsha-orchestrator-crewai): the same two-agent,
two-task crew run through Amsha and by plain CrewAI, side by side.

Amsha: ``session.run(...).result()`` with orchestrator ``crewai`` on the zero-delay
``scripted`` provider: builds the CrewAI agents, tasks and crew from the registry, runs them
with every LLM call through Amsha's LLM (streamed, counted, timed, evented), translates
CrewAI's events, writes and snapshots each task's output into the state.

Plain CrewAI: the same Agent/Task/Crew objects built and kicked off per run, with a custom
``BaseLLM`` returning the same texts at once. The figure is the wall time of one whole run;
the goal is within 5% of plain CrewAI.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from harness import Figure, Settings, Skip, benchmark, log

RESEARCH = "Tide pools hold anemones, hermit crabs and sea stars."
POST = "Tide pools are small worlds: anemones, crabs and stars."

CONFIG: dict[str, Any] = {
    "provider": {
        "name": "scripted",
        "options": {
            "responses": [{"match": "Research tide pools", "text": RESEARCH}, {"match": "hermit crabs", "text": POST}]
        },
    },
    "orchestrator": {"name": "crewai"},
    "agents": {
        "researcher": {"role": "Researcher", "goal": "Find facts", "backstory": "A marine biologist."},
        "writer": {"role": "Writer", "goal": "Write short posts", "backstory": "A writer."},
    },
    "tasks": {
        "research": {"description": "Research {topic}", "agent": "researcher", "expected_output": "Facts"},
        "write": {
            "description": "Write a post about {topic}",
            "agent": "writer",
            "context": ["research"],
            "expected_output": "A post",
        },
    },
}


def _plain_crewai() -> Any:
    from crewai import Agent, Crew, Process, Task
    from crewai.llms.base_llm import BaseLLM

    class FixedLLM(BaseLLM):
        """A custom CrewAI LLM answering like the scripted provider, at once."""

        def call(
            self,
            messages: Any,
            tools: Any = None,
            callbacks: Any = None,
            available_functions: Any = None,
            from_task: Any = None,
            from_agent: Any = None,
            response_model: Any = None,
        ) -> str:
            text = messages if isinstance(messages, str) else "\n".join(str(m.get("content")) for m in messages)
            return POST if "hermit crabs" in text else RESEARCH

        def get_input_tokens_count(self, messages: Any, tools: Any = None, response_model: Any = None) -> int:
            return 0

    def run() -> dict[str, str]:
        llm = FixedLLM(model="fixed")
        researcher = Agent(
            role="Researcher", goal="Find facts", backstory="A marine biologist.", llm=llm, max_retry_limit=0
        )
        writer = Agent(role="Writer", goal="Write short posts", backstory="A writer.", llm=llm, max_retry_limit=0)
        research = Task(name="research", description="Research tide pools", expected_output="Facts", agent=researcher)
        write = Task(
            name="write",
            description="Write a post about tide pools",
            expected_output="A post",
            agent=writer,
            context=[research],
        )
        out = Crew(agents=[researcher, writer], tasks=[research, write], process=Process.sequential).kickoff()
        return {t.name or "": t.raw for t in out.tasks_output}

    return run


@benchmark("crewai.crew.run_time")
def crew_run(settings: Settings) -> list[Figure]:
    for name, value in {"CREWAI_DISABLE_TELEMETRY": "true", "CREWAI_TRACING_ENABLED": "false"}.items():
        os.environ.setdefault(name, value)
    try:
        import crewai  # noqa: F401
        from amsha import ExecutionSession
    except ImportError as exc:
        raise Skip(f"crewai is not installed ({exc})") from None
    session = ExecutionSession(CONFIG)
    plain = _plain_crewai()

    def amsha_run() -> dict[str, Any]:
        return session.run(inputs={"topic": "tide pools"}).result(timeout=60).outputs

    assert amsha_run() == {"research": RESEARCH, "write": POST}
    assert plain() == {"research": RESEARCH, "write": POST}
    for _ in range(settings.pick(5, 2)):  # warm both
        amsha_run()
        plain()
    rounds = settings.pick(40, 8)
    a_times: list[float] = []
    p_times: list[float] = []
    for i in range(rounds):  # interleaved, alternating who goes first
        for fn, times in ((amsha_run, a_times), (plain, p_times))[:: 1 if i % 2 == 0 else -1]:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    session.close()
    amsha_ms = statistics.median(a_times) * 1e3
    peer_ms = statistics.median(p_times) * 1e3
    log(f"  amsha crewai orchestrator: median {amsha_ms:.2f} ms/run over {rounds} runs")
    log(f"  plain CrewAI, custom LLM: median {peer_ms:.2f} ms/run over {rounds} runs")
    return [
        Figure("crewai.crew.run_time", amsha_ms, peer_ms, "plain CrewAI crew with a custom BaseLLM", "ms/run", 1.05)
    ]
