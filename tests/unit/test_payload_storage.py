"""A run's payload is written once, at trigger: the writes a running run makes (claim,
progress, heartbeats, steps, completion) never rewrite it (SQLite).

SQLite rewrites a whole row, overflow pages included, whenever an UPDATE changes the
size of its record; with the payload in the row of the run, every progress message of a
new length wrote the payload again (20 updates of a run with a 20 MB payload wrote
360 MB). The bytes are counted as WAL frames: a reader that holds one snapshot open for
the whole test keeps checkpoints from copying any frame written after it into the
database file, and the WAL from restarting, so each page a commit writes is appended to
the -wal file: it grows by exactly (page size + 24) bytes per page written, whatever the
timing. (A checkpoint of older frames can only add to the count, never hide a write.)
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

from _api_helpers import sqlite_path, wait_until

from durably import Durably, StepContext, define_job

PAYLOAD_BYTES = 5_000_000
PROGRESS_UPDATES = 20
HEARTBEATS = 4


class WrittenBytes:
    """The bytes appended to a SQLite database and its WAL since `mark()`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.page_size = 4096
        self._start = self._size()

    def _size(self) -> int:
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    def mark(self) -> None:
        self._start = self._size()

    def since_mark(self) -> int:
        return self._size() - self._start

    def frames_since_mark(self) -> int:
        return self.since_mark() // (self.page_size + 24)


@contextmanager
def no_checkpoints(path: str) -> Iterator[WrittenBytes]:
    """Hold a read snapshot open, so that the WAL only grows (see the module)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM durably_runs").fetchone()
        written = WrittenBytes(path)
        written.page_size = int(reader.execute("PRAGMA page_size").fetchone()[0])
        try:
            yield written
        finally:
            reader.execute("ROLLBACK")


def test_progress_and_heartbeats_of_a_run_do_not_rewrite_its_large_payload(
    make_durably: Callable[..., Durably], db_url: str
) -> None:
    d = make_durably(heartbeat_interval=0.05, stale_threshold=30.0)
    heartbeats_seen: list[Any] = []

    def heartbeat_at() -> Any:
        run = d.get_run(run_id)
        assert run is not None
        return run.heartbeat_at

    def next_heartbeat() -> None:
        """Let the lease's own heartbeat thread write at least once more."""
        before = heartbeat_at()
        wait_until(lambda: heartbeat_at() != before)
        heartbeats_seen.append(before)

    @define_job(name="big-input")
    def big_input(step: StepContext, payload: Any) -> int:
        for i in range(PROGRESS_UPDATES):
            # a message of a new length each time: the run's record changes size
            step.progress(i + 1, PROGRESS_UPDATES, "m" * (40 * (i + 1)))
            if i % (PROGRESS_UPDATES // HEARTBEATS) == 0:
                next_heartbeat()
        return step.run("measure", lambda: len(payload["blob"]))

    handle = d.register({"big": big_input})["big"]
    payload = {"blob": "p" * PAYLOAD_BYTES}
    path = sqlite_path(db_url)
    with no_checkpoints(path) as written:
        run_id = handle.trigger(payload).id
        at_trigger = written.since_mark()
        written.mark()
        assert d.process_one()
        while_running = written.since_mark()
        frames = written.frames_since_mark()

    run = d.get_run(run_id)
    assert run is not None and run.status == "completed", run
    assert run.output == PAYLOAD_BYTES and run.payload == payload
    assert run.progress is not None and run.progress.current == PROGRESS_UPDATES
    assert len(heartbeats_seen) == HEARTBEATS
    # the measurement sees the payload when it is written: once, by the trigger
    assert at_trigger >= PAYLOAD_BYTES
    # claim, 20 progress updates, heartbeats, a step and the completion: a few pages each
    assert while_running < PAYLOAD_BYTES // 5, (
        f"running the run wrote {while_running} bytes ({frames} WAL frames of "
        f"{written.page_size} bytes) for a payload of {PAYLOAD_BYTES} bytes: the payload "
        "was rewritten"
    )
