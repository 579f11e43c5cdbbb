"""The analyzer's one error type for bad input, and the record of a file skipped by --keep-going.

Every reader raises :class:`InputError` with the file and the place in it (line, or byte offset
of the decompressed text), so a user can open the file at the spot; the CLI prints it as one line
or, under ``--keep-going``, lists it as a :class:`Skipped` entry in the output instead.
"""

from __future__ import annotations

from dataclasses import dataclass


class InputError(ValueError):
    """A file the analyzer cannot read: ``str()`` is ``FILE[:where]: reason``."""

    def __init__(self, source: str, reason: str, where: str = "", *, message: str | None = None) -> None:
        self.source = source
        self.reason = reason
        self.where = where
        super().__init__(message or f"{source}{':' + where if where else ''}: {reason}")

    @classmethod
    def verbatim(cls, source: str, message: str) -> InputError:
        """An error whose text is ``message`` as a reader already formatted it (``FILE:LINE: ...``)."""
        return cls(source, message, message=message)


@dataclass(frozen=True)
class Skipped:
    """A file left out of the analysis, and why (kept in the output: nothing is dropped silently)."""

    source: str
    reason: str

    @classmethod
    def of(cls, exc: InputError) -> Skipped:
        return cls(exc.source, str(exc))
