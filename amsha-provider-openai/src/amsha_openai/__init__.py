"""Amsha plugin distribution for the provider `openai` (OpenAI and OpenAI-compatible servers)."""

__version__ = "0.1.0"
