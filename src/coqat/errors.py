"""Errors that name the offending field and what is allowed."""


class CoqatError(Exception):
    """Base class for errors coqat reports to users (no traceback needed)."""


class ConfigError(CoqatError, ValueError):
    """A configuration value is invalid. The message names the field and what is allowed."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class DataError(CoqatError):
    """Input data is missing, empty, malformed or does not match its manifest."""
