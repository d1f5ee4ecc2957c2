"""Test against a real local server: :class:`OpenAIServer` speaks Chat Completions on
127.0.0.1 (standard library only), scripted per test with :class:`Reply`.

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

__all__ = ["OpenAIServer", "RecordedRequest", "Reply"]
