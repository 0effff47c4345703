"""CSV cells that a spreadsheet would run as formulas, neutralised (OWASP, "CSV Injection").

A sample id is a file name the candidate chose: ``=HYPERLINK(...)`` opened in Excel or LibreOffice is a
live formula. Text cells (and column names) that start with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return, or their full-width forms, get a leading ``'``, which spreadsheets take as "this is text". Numbers
stay numbers: numeric columns are left alone, and so is text that is a plain number (``-1.5``), which no
spreadsheet runs.
"""

from __future__ import annotations

import re

import pandas as pd

_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def neutralise_cell(value: object) -> object:
    """``value`` with a leading ``'`` if it is text a spreadsheet would run; anything else unchanged."""
    if isinstance(value, str) and value.startswith(_TRIGGERS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells and column names cannot run as formulas; numeric, boolean and
    date columns are kept as they are (same dtype)."""
    out = df.rename(columns=neutralise_cell)
    for i in range(out.shape[1]):
        column = out.iloc[:, i]
        if pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column):
            out.isetitem(i, column.map(neutralise_cell))
    return out
