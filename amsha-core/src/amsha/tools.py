"""Tools: client callables offered to the model, described by a JSON schema.

:func:`tool_spec` derives the schema from the function's signature and docstring;
:func:`invoke_tool` validates the model's arguments against it and calls the function (sync
or async). Orchestrators use both; they emit ``tool.*`` events around each call.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .errors import ExecutionError
from .provider import ToolSpec

__all__ = ["ToolError", "invoke_tool", "tool_spec"]


class ToolError(ExecutionError):
    """A tool was called with arguments that do not fit it, or raised."""


def _arguments_model(name: str, fn: Callable[..., Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = param.annotation if param.annotation is not inspect.Parameter.empty else Any
        default = param.default if param.default is not inspect.Parameter.empty else ...
        fields[param.name] = (annotation, default)
    model: type[BaseModel] = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return model


def tool_spec(name: str, fn: Callable[..., Any]) -> ToolSpec:
    """A :class:`ToolSpec` for ``fn``: its docstring's first paragraph and a JSON schema of
    its parameters (from their annotations)."""
    doc = inspect.getdoc(fn) or ""
    schema = _arguments_model(name, fn).model_json_schema()
    schema.pop("title", None)
    return ToolSpec(name=name, description=doc.split("\n\n")[0], parameters=schema)


async def invoke_tool(name: str, fn: Callable[..., Any], arguments: str) -> str:
    """Validate ``arguments`` (the model's JSON) and call ``fn``; the result as text (JSON
    for non-strings). Sync functions run in a worker thread."""
    try:
        raw = json.loads(arguments or "{}")
        args = _arguments_model(name, fn).model_validate(raw)
    except (ValueError, ValidationError) as exc:
        raise ToolError(f"tool {name!r}: arguments {arguments!r} do not fit its parameters: {exc}") from exc
    kwargs = {k: getattr(args, k) for k in type(args).model_fields}
    try:
        if inspect.iscoroutinefunction(fn):
            result = await fn(**kwargs)
        else:
            result = await asyncio.to_thread(fn, **kwargs)
    except Exception as exc:
        raise ToolError(f"tool {name!r} raised {type(exc).__name__}: {exc}") from exc
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
