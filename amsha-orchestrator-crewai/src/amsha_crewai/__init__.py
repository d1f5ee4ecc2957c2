"""Amsha plugin distribution for the orchestrator `crewai` (CrewAI crews)."""

__version__ = "0.1.0"
