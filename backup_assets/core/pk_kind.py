"""What became of one exported row: the ``kind`` of its row in the primary-key map.

The map stores each kind as its letter in a one-byte ``"char"`` column; SQL text compares against
the same letters (``kind IN ('I', 'O')``: the rows this import wrote).
"""

from __future__ import annotations

from enum import StrEnum


class PkKind(StrEnum):
    """A pk-map row's kind; each member equals its letter, so it can key a dict read from the map."""

    INSERTED = "I"  #: written as a new row (``new_pk`` is its id)
    EXISTING = "E"  #: merged onto a row the target already had (``new_pk`` is that row's id)
    OVERWRITTEN = "O"  #: written over a row the target already had, in place
    DROPPED = "D"  #: not imported: a parent it needs was not imported
    FILTERED = "F"  #: not imported: a filter or the scope left it (or a parent of it) out
