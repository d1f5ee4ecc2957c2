"""Helpers and contract suites for testing Amsha plugins (registered as a pytest plugin)."""
