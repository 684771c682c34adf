"""CSV files a spreadsheet opens safely: the one writer of every CSV the project writes.

A text cell that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return) is a
formula to Excel and LibreOffice: a class name ``=cmd|"/c calc"!A1`` from a checkpoint would run
when a user opens the predictions (CSV or formula injection). Such cells get a leading ``'``,
which spreadsheets show as text; numbers, and text that reads as a number (``-0.25``), are left
as they are, so values stay values.
"""
from __future__ import annotations

import csv
from typing import IO, Any, Iterable, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: Any) -> Any:
    """``value``, with a leading ``'`` when it is text that a spreadsheet would run as a formula."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value  # a number written as text
    except ValueError:
        return "'" + value


class SafeCsvWriter:
    """``csv.writer`` whose rows go through :func:`spreadsheet_text`."""

    def __init__(self, handle: IO[str], **options) -> None:
        self._writer = csv.writer(handle, **options)

    def writerow(self, row: Sequence[Any]) -> None:
        self._writer.writerow([spreadsheet_text(cell) for cell in row])

    def writerows(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(handle: IO[str], **options) -> SafeCsvWriter:
    return SafeCsvWriter(handle, **options)
