"""``AmshaCrewLLM`` on its own, in plain CrewAI code, and what the orchestrator sets up around
CrewAI: clean messages, no rate-limit retry layer of CrewAI's, offline defaults, YAML files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from amsha import LLM, ExecutionSession, LLMRequest
from amsha.builtins.scripted import ScriptedProvider
from amsha.errors import RateLimitError
from amsha_crewai.llm import AmshaCrewLLM, to_messages


class Recording(ScriptedProvider):
    """The scripted provider, keeping every request it gets."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.requests: list[LLMRequest] = []

    def stream(self, request: LLMRequest) -> Any:
        self.requests.append(request)
        return super().stream(request)


def test_messages_reach_the_provider_clean() -> None:
    provider = Recording({"responses": ["ok"]})
    llm = AmshaCrewLLM.wrap(LLM(provider, model="m"))
    messages = [
        {"role": "system", "content": "Be brief.", "cache_breakpoint": True},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {}}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
            "raw_tool_call_parts": ["..."],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42", "files": []},
    ]
    assert llm.call(messages) == "ok"
    sent = [m.to_dict() for m in provider.requests[0].messages]
    assert sent == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "name": "f", "arguments": '{"x": 1}'}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    assert to_messages("Hello")[0].to_dict() == {"role": "user", "content": "Hello"}


def test_crewai_adds_no_retry_layer_of_its_own() -> None:
    provider = ScriptedProvider({"failures": [{"kind": "rate_limit", "times": 100, "retry_after": 0.001}]})
    from amsha import RetryConfig

    llm = AmshaCrewLLM.wrap(LLM(provider, retry=RetryConfig(max_retries=1, initial_backoff_s=0, max_backoff_s=0)))
    started = time.monotonic()
    try:
        llm.call("hi")
    except RateLimitError:
        pass
    else:
        raise AssertionError("the rate limit did not surface")
    assert provider.calls == 2  # Amsha's two attempts; CrewAI's wrapper would make it 6
    assert time.monotonic() - started < 1.0  # and no CrewAI back-off sleeps (1 s, 2 s)


def test_tool_calls_come_back_in_crewais_native_format() -> None:
    provider = ScriptedProvider({"responses": [{"tool_calls": [{"id": "c9", "name": "f", "arguments": {"a": 1}}]}]})
    llm = AmshaCrewLLM.wrap(LLM(provider))
    tools = [{"type": "function", "function": {"name": "f", "description": "F", "parameters": {"type": "object"}}}]
    assert llm.supports_function_calling()
    assert llm.call("use f", tools=tools) == [
        {"id": "c9", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    # Given the functions, the call is made and its result returned (CrewAI's other path).
    provider2 = ScriptedProvider({"responses": [{"tool_calls": [{"name": "f", "arguments": {"a": 2}}]}]})
    assert AmshaCrewLLM.wrap(LLM(provider2)).call("x", tools=tools, available_functions={"f": lambda a: a * 10}) == 20


def test_the_adapter_drives_a_plain_crewai_crew() -> None:
    from crewai import Agent, Crew, Task

    provider = ScriptedProvider({"responses": [{"match": "Name a colour", "text": "Teal."}]})
    llm = AmshaCrewLLM.wrap(LLM(provider))
    agent = Agent(role="Painter", goal="Name colours", backstory="Paints.", llm=llm)
    task = Task(description="Name a colour", expected_output="One colour", agent=agent)
    assert Crew(agents=[agent], tasks=[task]).kickoff().raw == "Teal."
    assert provider.calls == 1


def test_offline_defaults_are_set_unless_the_user_set_them(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os, sys
        import amsha_crewai.orchestrator
        print(os.environ["CREWAI_DISABLE_TELEMETRY"], os.environ["CREWAI_TRACING_ENABLED"])
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREWAI_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert out.stdout.split() == ["true", "false"]
    env["CREWAI_TRACING_ENABLED"] = "true"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert out.stdout.split() == ["true", "true"]


def test_a_run_never_waits_for_input_or_the_network(tmp_path: Path) -> None:
    """A whole crew in a fresh process with no CREWAI_* variables set and stdin closed."""
    config = tmp_path / "amsha.yaml"
    config.write_text(
        textwrap.dedent(
            """
            provider: {name: scripted, options: {responses: ["Done."]}}
            orchestrator: {name: crewai}
            agents: {a: {role: Helper, goal: Help}}
            tasks: {t: {description: Help now, agent: a, expected_output: Help}}
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREWAI_")}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "amsha", "run", str(config), "--json"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert '"Done."' in out.stdout
    assert time.monotonic() - started < 60


def test_crewai_style_yaml_files_drive_a_crew(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text(
        textwrap.dedent(
            """
            researcher:
              role: >
                {topic} Researcher
              goal: Find facts about {topic}
              backstory: A curious mind.
            """
        )
    )
    (tmp_path / "tasks.yaml").write_text(
        textwrap.dedent(
            """
            research_task:
              description: Research {topic} in depth
              expected_output: A list of facts
              agent: researcher
            """
        )
    )
    (tmp_path / "amsha.yaml").write_text(
        textwrap.dedent(
            """
            provider: {name: scripted, options: {responses: [{match: Research kelp in depth, text: Kelp grows fast.}]}}
            orchestrator: {name: crewai}
            agents: agents.yaml
            tasks: tasks.yaml
            """
        )
    )
    with ExecutionSession(tmp_path / "amsha.yaml") as session:
        result = session.run(inputs={"topic": "kelp"}).result(timeout=60)
    assert result.outputs == {"research_task": "Kelp grows fast."}
