"""The core's built-in backends: scripted provider, direct orchestrator, memory and file stores, console and jsonl observers."""
