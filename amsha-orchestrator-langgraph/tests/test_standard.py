"""langchain-core's standard unit tests for chat models, run against AmshaChatModel."""

from __future__ import annotations

from typing import Any

from amsha_langgraph import AmshaChatModel
from langchain_tests.unit_tests import ChatModelUnitTests

CONFIG = {"provider": {"name": "scripted", "model": "scripted-1", "options": {"default": "ok", "tools": True}}}


class TestAmshaChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[AmshaChatModel]:
        return AmshaChatModel

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The suite adds api_key="test"; AmshaChatModel refuses a key on purpose (Amsha reads
        # keys from the environment variable its config names: test_chat_model.py checks the
        # refusal). Every other standard parameter (timeout, max_retries, stop...) is kept.
        params = dict(super().standard_chat_model_params)
        assert params.pop("api_key") == "test"
        return params

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"config": CONFIG}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        # Amsha's own environment overrides reach a model built from config.
        return {"AMSHA__PROVIDER__MODEL": "from-env"}, {"config": CONFIG}, {"model_name": "from-env"}
