"""Errors the loader reports to people: what went wrong and what to do."""

from __future__ import annotations


class LoaderError(Exception):
    """A failure with a hint telling the user what to do next."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"
