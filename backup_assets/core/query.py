"""Reading the one row of an aggregate query, typed: psycopg's ``fetchone()`` may return None."""

from __future__ import annotations

from typing import Any

import psycopg


def one_row(cursor: psycopg.Cursor[Any]) -> Any:
    """The row an aggregate query (``count``, ``EXISTS``, ``min``/``max``...) always returns."""
    row = cursor.fetchone()
    if row is None:
        raise psycopg.ProgrammingError("an aggregate query returned no row")
    return row
