"""Options of provider ``openai``: the ``options`` mapping under ``provider`` (or ``llms.X``).

Validated where declared (pydantic, ``extra="forbid"``), so a typo is an error naming the
key: ``provider.options.timout_s: unknown key``. Importing this module imports pydantic only,
never the ``openai`` SDK.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["OPENAI_BASE_URL", "OpenAIOptions"]

#: Where requests go when ``base_url`` is not set.
OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIOptions(BaseModel):
    """Options of provider ``openai`` (OpenAI and any server speaking Chat Completions).

    Secrets are never written here: ``api_key_env`` (and ``extra_headers_env``) name the
    environment variables that hold them. Generation parameters (``temperature``,
    ``max_tokens``, ``stop``, ``seed``) are defaults that a call's own values override.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="the model, when provider.model (or llms.X.model) does not name one; that one wins"
    )
    base_url: str | None = Field(
        None,
        description=(
            "the server's Chat Completions base URL, e.g. http://127.0.0.1:11434/v1 for Ollama; "
            f"unset: {OPENAI_BASE_URL} (OPENAI_BASE_URL in the environment is not read)"
        ),
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        min_length=1,
        description=(
            "name of the environment variable holding the API key; required when base_url is unset, "
            "optional (a placeholder is sent) when base_url points at another server"
        ),
    )
    organization: str | None = Field(None, description="OpenAI organization id (sent as OpenAI-Organization)")
    project: str | None = Field(None, description="OpenAI project id (sent as OpenAI-Project)")
    timeout_s: float = Field(
        60.0,
        gt=0,
        description="seconds allowed to connect, and between two reads of the answer (not for a whole stream)",
    )
    idle_timeout_s: float | None = Field(
        None,
        gt=0,
        description=(
            "seconds a stream may go without an event (SSE comments such as keep-alives do not count); unset: timeout_s"
        ),
    )
    total_timeout_s: float | None = Field(
        None,
        gt=0,
        description="seconds one attempt may take from the request to the end of its answer, streamed or not; "
        "unset: no limit",
    )
    max_retries: int | None = Field(
        None,
        ge=0,
        le=100,
        description=(
            "retries after the first attempt, done by Amsha's LLM wrapper (the SDK's own retries are always off); "
            "unset: the retry section of the config decides (default 2)"
        ),
    )
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens",
        description="the request field max_tokens is sent as; OpenAI's reasoning models want max_completion_tokens",
    )
    stop: list[str] | None = None
    seed: int | None = None
    extra_headers: dict[str, str] = Field(default_factory=dict, description="headers sent with every request")
    extra_headers_env: dict[str, str] = Field(
        default_factory=dict,
        description="headers whose values are secrets: header name -> environment variable holding its value",
    )
    include_usage: bool = Field(
        True, description="ask for usage in streams (stream_options.include_usage); turn off for servers that refuse it"
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (got {value!r})")
        return value.rstrip("/")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("extra_headers")
    @classmethod
    def _no_secret_header(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in ("authorization", "api-key", "x-api-key"):
                raise ValueError(
                    f"header {name!r} holds a secret: name the environment variable holding it in "
                    "extra_headers_env instead (or use api_key_env)"
                )
        return value
