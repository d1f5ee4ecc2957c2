"""Test against a real local server: :class:`OpenAIServer` speaks Chat Completions on
127.0.0.1 (standard library only), scripted per test with :class:`Reply`; and
:func:`chat_completions_responder` teaches the protocol to :class:`amsha.testing.HTTPPeer`
(the peer ``ProviderContract`` drives for its transport checks).

With amsha-provider-openai installed, pytest also gets the fixture ``openai_server`` (a
started server, stopped after the test)::

    from amsha_openai.testing import Reply

    def test_my_app(openai_server):
        openai_server.script(Reply("Paris"))
        session = ExecutionSession({"provider": openai_server.provider_config()})
        ...
"""

from __future__ import annotations

from .server import OpenAIServer, RecordedRequest, Reply


def __getattr__(name: str) -> object:
    # The HTTPPeer responder imports amsha.testing (and so pytest): only when asked for.
    if name == "chat_completions_responder":
        from .peer import chat_completions_responder

        return chat_completions_responder
    raise AttributeError(name)


__all__ = ["OpenAIServer", "RecordedRequest", "Reply", "chat_completions_responder"]
