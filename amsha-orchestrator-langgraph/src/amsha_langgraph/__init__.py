"""Amsha plugin distribution for the orchestrator `langgraph` (LangGraph graphs)."""

__version__ = "0.1.0"
