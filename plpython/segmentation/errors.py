"""Errors with a stable SQLSTATE and a hint, raised by the core and the adapters.

The PL/Python adapters turn them into ``plpy.error(message, detail, hint,
sqlstate)`` so callers see a clean message, never a Python traceback. The codes
(class ``SG``) are documented in ``docs/errors.md``.
"""

from __future__ import annotations


class SegmentationError(Exception):
    """A user-facing failure: ``sqlstate`` is stable, ``hint`` says what to do."""

    sqlstate = "SG000"

    def __init__(self, message: str, *, hint: str | None = None, detail: str | None = None,
                 sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        if sqlstate is not None:
            self.sqlstate = sqlstate


class UnknownGame(SegmentationError):
    sqlstate = "SG001"


class EmptyWindow(SegmentationError):
    sqlstate = "SG002"


class PopulationTooSmall(SegmentationError):
    sqlstate = "SG003"


class NoActiveTaxonomy(SegmentationError):
    sqlstate = "SG004"


class UnknownPlayer(SegmentationError):
    sqlstate = "SG005"


class InvalidFeatures(SegmentationError):
    sqlstate = "SG006"


class TooFewFeatures(SegmentationError):
    sqlstate = "SG007"


class InvalidArgument(SegmentationError):
    sqlstate = "SG008"


class BatchSlotsExhausted(SegmentationError):
    sqlstate = "SG009"


class InvalidDocument(SegmentationError):
    sqlstate = "SG012"


class UnknownTaxonomy(SegmentationError):
    sqlstate = "SG013"
