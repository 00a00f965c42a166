"""Every read and write of durably's tables, on top of a `Dialect`, one job per module:

- `_sql`: compiled statements, transactions (rerun after a deadlock), clocks, rows;
- `claims`: taking a run, per backend capability, and stale recovery;
- `leased`: the writes made for a claimed run, fenced by its generation, and its final write;
- `runs`: creating runs and the state changes users ask for (cancel, retry, delete);
- `reads`: everything that only reads.
"""

from __future__ import annotations

from .._clock import Clock
from .._dialect import Dialect
from ._sql import Db, dumps, loads
from .claims import Claim, ClaimRequest, Claims
from .leased import Complete, Fail, Final, LeasedWrites, Release
from .reads import MAX_PAGE, LeaseState, Reads
from .runs import NewRun, RunChanges

__all__ = [
    "MAX_PAGE",
    "Claim",
    "ClaimRequest",
    "Complete",
    "Fail",
    "Final",
    "LeaseState",
    "NewRun",
    "Release",
    "Store",
    "dumps",
    "loads",
]


class Store:
    """The store's parts over one database connection (see the module docstring)."""

    def __init__(self, dialect: Dialect, clock: Clock) -> None:
        self.db = Db(dialect, clock)
        self.claims = Claims(self.db)
        self.leased = LeasedWrites(self.db, self.claims)
        self.runs = RunChanges(self.db)
        self.reads = Reads(self.db)

    def now(self) -> str:
        """The current time in the stored form (this process's clock)."""
        return self.db.now()
