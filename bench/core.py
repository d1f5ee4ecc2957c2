"""Figures of amsha-core: the LLM wrapper's overhead, import time and session creation.

The peer is langchain-core (its fake chat models stand in for a zero-latency provider).
Every figure is lower-is-better; see README.md for what each one measures.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from importlib import metadata, util
from pathlib import Path
from typing import Any

from harness import Figure, Settings, Skip, benchmark, check, log, paired, python_env, time_python, timed

PROMPT = "Write one short sentence about tide pools."
# The answer both sides return for the per-call figure: a typical short reply.
TEXT = "Tide pools are rocky seaside basins where anemones, crabs and snails wait for the tide to return."
STREAM_TOKENS = 100
# Amsha's scripted provider streams word by word (a word and the space after it): 100 words,
# 100 chunks. langchain-core's FakeListChatModel streams one character a chunk: 100
# characters, 100 chunks. The texts differ so that both streams carry exactly 100 tokens.
AMSHA_STREAM_TEXT = " ".join(f"word{i}" for i in range(STREAM_TOKENS))
PEER_STREAM_TEXT = "".join("tidepools"[i % 9] for i in range(STREAM_TOKENS))
# What creating a session must never import (the plugin modules are imported at creation;
# frameworks belong in the adapter modules that a factory imports only when selected).
FRAMEWORKS = ("openai", "crewai", "langgraph", "langchain", "starlette", "uvicorn")
FIRST_PARTY = (
    "amsha-provider-openai",
    "amsha-orchestrator-crewai",
    "amsha-orchestrator-langgraph",
    "amsha-state-sqlite",
    "amsha-observer-opentelemetry",
    "amsha-ui",
)


def _langchain() -> tuple[Any, Any]:
    """The peer's fake chat models module and its ``HumanMessage`` (or :class:`Skip`)."""
    try:
        from langchain_core.language_models import fake_chat_models
        from langchain_core.messages import HumanMessage
    except ImportError as exc:  # the peer is a bench dependency, not a project one
        raise Skip(f"langchain-core is not installed ({exc}); pip install 'langchain-core>=0.3'") from None
    return fake_chat_models, HumanMessage


def _drain(iterator: Any) -> None:
    for _ in iterator:
        pass


# ---- the LLM wrapper ----------------------------------------------------------------------


@benchmark("llm.generate.overhead_per_call")
def llm_generate(settings: Settings) -> list[Figure]:
    """What the wrapper adds to one complete call, over the provider's own work.

    Amsha: ``LLM(provider).generate(PROMPT)`` minus ``provider.generate(request)`` (the
    request built once, up front), with the zero-latency ``scripted`` provider.

    langchain-core: ``FakeListChatModel.invoke(PROMPT)`` minus ``model._generate(messages)``
    (the ``[HumanMessage]`` built once, up front). ``_generate`` is the part a chat model
    integration implements, the equivalent of a provider's ``generate``: here it picks the
    answer and builds the ``AIMessage``/``ChatGeneration``/``ChatResult``. So both overheads
    are "the framework around the model": input coercion, callbacks/events book-keeping,
    timing, usage, the result object.
    """
    from amsha import LLM
    from amsha.builtins.scripted import ScriptedProvider

    fake, HumanMessage = _langchain()
    provider = ScriptedProvider({"responses": [TEXT]})
    llm = LLM(provider)
    request = llm.request(PROMPT)
    model = fake.FakeListChatModel(responses=[TEXT])
    messages = [HumanMessage(PROMPT)]
    # Both sides must do the work we think they do.
    assert llm.generate(PROMPT).text == TEXT and provider.generate(request).text == TEXT
    assert model.invoke(PROMPT).content == TEXT
    assert model._generate(messages).generations[0].message.content == TEXT

    amsha = paired(lambda: llm.generate(PROMPT), lambda: provider.generate(request), settings=settings)
    log(f"  amsha LLM.generate: {amsha.describe()}")
    peer = paired(lambda: model.invoke(PROMPT), lambda: model._generate(messages), settings=settings)
    log(f"  langchain-core FakeListChatModel.invoke: {peer.describe()}")
    return [
        Figure(
            "llm.generate.overhead_per_call",
            amsha.overhead / 1e3,
            peer.overhead / 1e3,
            "langchain-core FakeListChatModel.invoke() over its _generate()",
            "us/call",
            0.1,
        )
    ]


@benchmark("llm.standalone.overhead_per_call")
def llm_standalone(settings: Settings) -> list[Figure]:
    """A call outside any run, with its events delivered: what a session's LLM adds over the
    provider's own work when the session has one (do-nothing) observer.

    Amsha: ``session.llm().generate(PROMPT)`` minus ``provider.generate(request)``, the
    observer's thread caught up at the end of every batch (``flush_observers``, inside the
    timing). langchain-core: ``FakeListChatModel.invoke(PROMPT)`` with a do-nothing callback
    handler attached (its observer) minus ``model._generate(messages)``. Reported only:
    the per-call figure with no observer is ``llm.generate.overhead_per_call`` (a session's
    LLM with no observer adds about a microsecond to it)."""
    from amsha import ExecutionSession

    fake, HumanMessage = _langchain()
    from langchain_core.callbacks import BaseCallbackHandler

    class Quiet:
        def on_event(self, event: Any) -> None:
            pass

        def close(self) -> None:
            pass

    config = {"provider": {"name": "scripted", "model": "scripted-1", "options": {"responses": [TEXT]}}}
    session = ExecutionSession(config, observers=[Quiet()])
    try:
        llm = session.llm()
        provider = llm.provider
        request = llm.request(PROMPT)
        model = fake.FakeListChatModel(responses=[TEXT])
        messages = [HumanMessage(PROMPT)]
        callbacks = {"callbacks": [BaseCallbackHandler()]}
        assert llm.generate(PROMPT).text == TEXT and provider.generate(request).text == TEXT
        assert session.flush_observers(10) and session.llm_totals.calls == 1
        assert model.invoke(PROMPT, config=callbacks).content == TEXT

        amsha = paired(
            lambda: llm.generate(PROMPT),
            lambda: provider.generate(request),
            settings=settings,
            settle=(lambda: session.flush_observers(10), None),
        )
        log(f"  amsha session.llm().generate, one observer: {amsha.describe()}")
        peer = paired(lambda: model.invoke(PROMPT, config=callbacks), lambda: model._generate(messages), settings=settings)
        log(f"  langchain-core FakeListChatModel.invoke with a callback handler: {peer.describe()}")
    finally:
        session.close()
    return [
        Figure(
            "llm.standalone.overhead_per_call",
            amsha.overhead / 1e3,
            peer.overhead / 1e3,
            "langchain-core FakeListChatModel.invoke() with a callback handler, over its _generate()",
            "us/call",
            None,
        )
    ]


@benchmark("llm.stream.overhead_per_token")
def llm_stream(settings: Settings) -> list[Figure]:
    """What the wrapper adds to a streamed 100-token answer, per token (the per-call part
    amortized over the 100 tokens).

    Amsha: consuming ``LLM(provider).stream(PROMPT)`` minus consuming
    ``provider.stream(request)``. langchain-core: consuming ``FakeListChatModel.stream(PROMPT)``
    minus consuming ``model._stream(messages)`` (the integration's own chunk generator).
    Both consume with the same plain ``for`` loop.
    """
    from amsha import LLM
    from amsha.builtins.scripted import ScriptedProvider

    fake, HumanMessage = _langchain()
    provider = ScriptedProvider({"responses": [AMSHA_STREAM_TEXT]})
    llm = LLM(provider)
    request = llm.request(PROMPT)
    model = fake.FakeListChatModel(responses=[PEER_STREAM_TEXT])
    messages = [HumanMessage(PROMPT)]
    # Both streams carry exactly STREAM_TOKENS text chunks and the whole answer.
    with llm.stream(PROMPT) as stream:
        chunks = [c.text for c in stream if c.text]
    assert len(chunks) == STREAM_TOKENS and "".join(chunks) == AMSHA_STREAM_TEXT, len(chunks)
    assert stream.response is not None and stream.response.text == AMSHA_STREAM_TEXT
    assert len([c for c in provider.stream(request) if c.text]) == STREAM_TOKENS
    peer_chunks = [c.content for c in model.stream(PROMPT) if c.content]
    assert len(peer_chunks) == STREAM_TOKENS and "".join(peer_chunks) == PEER_STREAM_TEXT, len(peer_chunks)
    assert len(list(model._stream(messages))) == STREAM_TOKENS

    amsha = paired(lambda: _drain(llm.stream(PROMPT)), lambda: _drain(provider.stream(request)), settings=settings)
    log(f"  amsha LLM.stream, per token: {amsha.describe(per=STREAM_TOKENS)}")
    peer = paired(lambda: _drain(model.stream(PROMPT)), lambda: _drain(model._stream(messages)), settings=settings)
    log(f"  langchain-core FakeListChatModel.stream, per token: {peer.describe(per=STREAM_TOKENS)}")
    return [
        Figure(
            "llm.stream.overhead_per_token",
            amsha.overhead / 1e3 / STREAM_TOKENS,
            peer.overhead / 1e3 / STREAM_TOKENS,
            "langchain-core FakeListChatModel.stream() over its _stream(), 100-token answer",
            "us/token",
            0.1,
        )
    ]


# ---- import time --------------------------------------------------------------------------


def _bytecode_note(module: str) -> None:
    """Say so when a package's bytecode is not cached: its import time then includes compiling."""
    spec = util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return
    if not Path(util.cache_from_source(spec.origin)).exists():
        log(f"  note: no bytecode cache for {module} ({spec.origin}): its import time includes compiling it")


def _import_figure(
    name: str, code: str, peer_code: str, goal: float, settings: Settings, runs: int, peer_module: str
) -> Figure:
    if util.find_spec(peer_module) is None:
        raise Skip(f"{peer_module} is not installed")
    base = "pass"
    # --quick skips the warm-up run: the median of its few runs absorbs one cold run.
    times = time_python([base, code, peer_code], runs=runs, warmup=not settings.quick)
    for module in ("amsha", peer_module):
        _bytecode_note(module)
    med = {c: statistics.median(t) / 1e6 for c, t in times.items()}
    amsha, peer = med[code] - med[base], med[peer_code] - med[base]
    log(
        f"  median wall time of {runs} fresh interpreters: `{base}` {med[base]:.1f} ms, "
        f"`{code}` {med[code]:.1f} ms, `{peer_code}` {med[peer_code]:.1f} ms"
    )
    return Figure(name, amsha, peer, f"python -c '{peer_code}'", "ms", goal)


@benchmark("import.amsha")
def import_amsha(settings: Settings) -> list[Figure]:
    """``python -c "import amsha"`` minus ``python -c "pass"`` (median of fresh interpreters),
    against the same for ``import langchain_core``."""
    runs = settings.pick(21, 5)
    return [
        _import_figure("import.amsha", "import amsha", "import langchain_core", 0.2, settings, runs, "langchain_core")
    ]


@benchmark("import.amsha_session_api")
def import_session_api(settings: Settings) -> list[Figure]:
    """What a client imports to use a session, against what it imports to write a
    langchain-core chat model."""
    runs = settings.pick(11, 3)
    return [
        _import_figure(
            "import.amsha_session_api",
            "from amsha import ExecutionSession",
            "from langchain_core.language_models import BaseChatModel",
            1.0,
            settings,
            runs,
            "langchain_core",
        )
    ]


# ---- session creation ---------------------------------------------------------------------

_SESSION_PROBE = """
import json, sys, time
import amsha
t0 = time.perf_counter()
session = amsha.ExecutionSession()
first = time.perf_counter() - t0
frameworks = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0].startswith(FRAMEWORKS)})
plugins = [[p.name, p.distribution, p.version, p.error] for p in session.plugins.plugins]
session.close()
print(json.dumps({"frameworks": frameworks, "plugins": plugins, "first_s": first}))
"""


def _session_probe() -> None:
    """In a fresh interpreter: create one default session, then list what it imported."""
    code = _SESSION_PROBE.replace("FRAMEWORKS", repr(FRAMEWORKS))
    proc = subprocess.run([sys.executable, "-c", code], env=python_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        check("session.create.no_framework_imports", False, f"the probe failed: {proc.stderr.strip()}")
        return
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    plugins = ", ".join(
        f"{n} ({d or 'in code'} {v or ''}{'; ERROR ' + e if e else ''})".replace(" )", ")")
        for n, d, v, e in data["plugins"]
    )
    log(f"  plugins loaded by a default session: {plugins}")
    log(f"  first session in a fresh interpreter (discovery and imports): {data['first_s'] * 1e3:.1f} ms")
    frameworks = data["frameworks"]
    check(
        "session.create.no_framework_imports",
        not frameworks,
        "creating a session imported " + (", ".join(frameworks) if frameworks else "none of " + "/".join(FRAMEWORKS)),
    )


@benchmark("session.create")
def session_create(settings: Settings) -> list[Figure]:
    """``ExecutionSession()`` (default config: scripted provider, direct orchestrator, memory
    store) created repeatedly in one process, with whatever plugins are installed; plugin
    discovery is cached per process, so this is the steady state. The peer is constructing
    a langchain-core chat model object: not a session (langchain-core has none), only the
    nearest everyday "make the thing you call" step, so the figure has no goal."""
    from amsha import ExecutionSession

    installed = sorted({ep.dist.name for ep in metadata.entry_points(group="amsha") if ep.dist is not None})
    missing = [d for d in FIRST_PARTY if d not in installed]
    log(f"  plugin distributions installed: {', '.join(installed) or 'none'}")
    if missing:
        log(f"  note: not installed, so not part of this figure: {', '.join(missing)}")
    _session_probe()
    fake, _ = _langchain()

    sessions: list[Any] = []
    models: list[Any] = []

    def release() -> None:
        for s in sessions:
            s.close()
        sessions.clear()
        models.clear()

    ExecutionSession().close()  # discovery happens once per process: not part of the figure
    amsha = timed(lambda: sessions.append(ExecutionSession()), settings=settings, after_batch=release)
    peer = timed(
        lambda: models.append(fake.FakeListChatModel(responses=[TEXT])), settings=settings, after_batch=release
    )
    for label, t in (("amsha ExecutionSession()", amsha), ("langchain-core FakeListChatModel(...)", peer)):
        log(
            f"  {label}: {t.median / 1e3:.4g} us (quartiles {t.low / 1e3:.4g}..{t.high / 1e3:.4g}); "
            f"{t.repeat} batches of {t.number}"
        )
    return [
        Figure(
            "session.create",
            amsha.median / 1e3,
            peer.median / 1e3,
            "langchain-core FakeListChatModel(responses=[...]) construction (a chat model object, not a session)",
            "us",
            None,
        )
    ]


class _NothingObserver:
    """An observer that does nothing with what it is handed (tokens it never receives)."""

    ignored_event_kinds = frozenset({"llm.token"})
    seen = 0

    def on_event(self, event: Any) -> None:
        _NothingObserver.seen += 1


@benchmark("observer.delivery.per_run")
def observer_delivery(settings: Settings) -> list[Figure]:
    """What handing a run's events to an observer costs the run: a one-call run (``direct``,
    zero-latency ``scripted``, ``memory`` store) with an observer that does nothing, against
    the same run with none. Each batch of runs ends with ``flush_observers()`` inside its
    timing, so every hand-over is counted. The peer is the bare run: the goal bounds what the
    observer thread's queue and wake-ups add to it."""
    from amsha import ExecutionSession

    config = {
        "provider": {"name": "scripted", "model": "scripted-1", "options": {"responses": [TEXT]}},
        "agents": {"a": {"role": "Writer", "goal": "Write"}},
        "tasks": {"t": {"description": "Write one sentence.", "agent": "a"}},
    }
    with ExecutionSession(config, observers=[_NothingObserver()]) as on, ExecutionSession(config) as off:
        on.run().result()
        assert on.flush_observers(10) and _NothingObserver.seen >= 4, _NothingObserver.seen
        t = paired(
            lambda: on.run().result(),
            lambda: off.run().result(),
            settings=settings,
            settle=(on.flush_observers, off.flush_observers),
        )
    log(f"  a run with an observer doing nothing vs none: {t.describe()}")
    return [
        Figure(
            "observer.delivery.per_run",
            t.wrapped / 1e3,
            t.bare / 1e3,
            "the same one-call run with no observer",
            "us/call",
            1.05,
        )
    ]
