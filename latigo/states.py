"""A ledger window's states, and the SQL that tells them apart: shared by the ledger, its
history and the read model without their importing one another."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import and_

from latigo.schema import ledger


class State(StrEnum):
    PLANNED = "planned"
    QUEUED = "queued"
    DONE = "done"
    NO_DATA = "no_data"
    FAILED = "failed"
    DEAD = "dead"


# finished, for good or until an operator acts: the states the ledger's history keeps as
# runs (latigo.history); a dead window's error stays in its dead letter
COMPACTED = (State.DONE, State.NO_DATA, State.DEAD)


def partial():
    """SQL: the window is done, but with fewer rows stored than it has (its note says why)."""
    rows = ledger.c.stored_rows, ledger.c.expected_rows
    # never NULL: windows recorded before rows were counted are not partial
    return and_(ledger.c.state == State.DONE, rows[0].is_not(None), rows[1].is_not(None), rows[0] < rows[1])
