"""Entry point module of amsha-provider-openai (group ``amsha``): registers provider ``openai``.

Tiny on purpose: it is imported whenever plugins are discovered, so the provider module
(which imports the ``openai`` SDK) is named as a string and imported only when a session
selects ``openai``.
"""

from __future__ import annotations

from typing import Any

from amsha import hookimpl

from .options import OpenAIOptions

AMSHA_PLUGIN_API = "1.0"


@hookimpl
def amsha_register_providers(register: Any) -> None:
    register(
        "openai",
        "amsha_openai.provider:build",
        options=OpenAIOptions,
        description="OpenAI and any server speaking Chat Completions (vLLM, Ollama, llama.cpp, LM Studio, gateways)",
    )
