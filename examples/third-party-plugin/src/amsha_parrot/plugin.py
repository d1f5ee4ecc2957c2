"""Entry point module: registers provider ``parrot``. Tiny on purpose: it is imported
whenever plugins are discovered, so the provider module is named as a string and imported
only when a session selects ``parrot``."""

from __future__ import annotations

from typing import Any

from amsha import hookimpl
from pydantic import BaseModel, ConfigDict, Field

AMSHA_PLUGIN_API = "1.1"


class ParrotOptions(BaseModel):
    """Options of provider ``parrot`` (under ``provider.options`` in config)."""

    model_config = ConfigDict(extra="forbid")
    prefix: str = Field("", description="text put before every answer")
    word_delay_s: float = Field(0.0, ge=0, description="pause between streamed words")
    fail_with: str | None = Field(
        None,
        description="simulate a failure: rate_limit, server, timeout, connection, auth, permission, not_found, "
        "bad_request, or stream_interrupt (a stream that breaks after its first word)",
    )


@hookimpl
def amsha_register_providers(register: Any) -> None:
    register(
        "parrot", "amsha_parrot.provider:build", options=ParrotOptions, description="repeats the last user message"
    )
