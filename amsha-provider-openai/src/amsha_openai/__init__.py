"""amsha-provider-openai: Amsha's provider ``openai``, for OpenAI and every server that speaks
the Chat Completions protocol (vLLM, Ollama, llama.cpp's server, LM Studio, gateways).

``import amsha_openai`` is cheap: :class:`OpenAIProvider` (which imports the ``openai`` SDK)
loads on first use. The local test server is in :mod:`amsha_openai.testing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import OpenAIOptions

if TYPE_CHECKING:
    from .provider import OpenAIProvider

__version__ = "0.1.0"
__all__ = ["OpenAIOptions", "OpenAIProvider", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "OpenAIProvider":
        from .provider import OpenAIProvider

        return OpenAIProvider
    raise AttributeError(f"module 'amsha_openai' has no attribute {name!r}")
