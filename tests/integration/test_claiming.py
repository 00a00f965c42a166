"""Many concurrent claimers over many rounds, on every backend.

Each claimer is its own `Durably` instance (its own connections: on the servers, its own
sessions, so the claims really race in the database) driven by its own thread with
`process_one`. Every run records which claimer executed it and when, so the test can
prove that no run was executed twice and that runs sharing a `concurrency_key` never
overlapped, whatever the backend's claiming statement is (`FOR UPDATE SKIP LOCKED` on
PostgreSQL and MariaDB, one `UPDATE ... RETURNING` or `BEGIN IMMEDIATE` on SQLite).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

from pydantic import BaseModel

from durably import BatchItem, Durably, StepContext, define_job

CLAIMERS = 6
ROUNDS = 6
RUNS_PER_ROUND = 40
KEYS = ("k0", "k1", "k2")


class Item(BaseModel):
    round: int
    key: str | None = None


class Journal:
    """What each execution of a run did, appended by the job from every claimer thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executions: list[tuple[str, str, float, float]] = []  # run, claimer, start, end

    def record(self, run_id: str, claimer: str, start: float, end: float) -> None:
        with self.lock:
            self.executions.append((run_id, claimer, start, end))


def _job(journal: Journal) -> object:
    def run(step: StepContext, payload: Item) -> int:
        start = time.monotonic()
        step.run("work", lambda: payload.round)
        # a short pause widens the window in which a second claim of the same key could start
        time.sleep(0.002)
        step.run("more", lambda: payload.round + 1)
        journal.record(step.run_id, threading.current_thread().name, start, time.monotonic())
        return payload.round

    return define_job(name="claimed", input=Item, run=run)


def _drain(claimers: list[Durably], expected: int, journal: Journal) -> None:
    """Run every claimer in a thread of its own until the journal holds `expected` runs."""
    errors: list[BaseException] = []

    def loop(d: Durably) -> None:
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with journal.lock:
                    if len(journal.executions) >= expected:
                        return
                if not d.process_one():
                    time.sleep(0.001)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [
        threading.Thread(target=loop, args=(d,), name=f"claimer-{i}")
        for i, d in enumerate(claimers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a claimer thread hung"


def test_concurrent_claimers_never_execute_a_run_twice_nor_overlap_a_key_over_many_rounds(
    make_durably: Callable[..., Durably],
) -> None:
    journal = Journal()
    job = _job(journal)
    claimers = [make_durably() for _ in range(CLAIMERS)]
    for d in claimers:
        d.register({"claimed": job})  # type: ignore[dict-item]
    trigger = claimers[0].jobs.claimed

    all_runs = []
    for round_no in range(ROUNDS):
        items = [
            # half the runs share three keys, half have none
            BatchItem(Item(round=round_no), concurrency_key=KEYS[i % 3] if i % 2 else None)
            for i in range(RUNS_PER_ROUND)
        ]
        runs = trigger.batch_trigger(items)
        all_runs.extend(runs)
        _drain(claimers, len(all_runs), journal)

    executed = Counter(run_id for run_id, *_ in journal.executions)
    assert executed == Counter({r.id: 1 for r in all_runs}), "a run was executed twice"
    assert all(d_run.status == "completed" for d_run in claimers[0].get_runs(limit=10_000))
    assert len(claimers[0].get_runs(status="completed", limit=10_000)) == len(all_runs)
    claimers_used = {claimer for _, claimer, _, _ in journal.executions}
    assert len(claimers_used) > 1, "one claimer did all the work: the race was not exercised"

    spans = {run_id: (start, end) for run_id, _, start, end in journal.executions}
    by_key: dict[str, list[str]] = defaultdict(list)
    for r in all_runs:
        if r.concurrency_key is not None:
            by_key[r.concurrency_key].append(r.id)
    for key, ids in by_key.items():
        ordered = sorted(ids, key=lambda rid: spans[rid][0])
        for earlier, later in itertools.pairwise(ordered):
            assert spans[earlier][1] <= spans[later][0], f"two runs of {key} overlapped"
        # the runs of a key start in trigger order
        assert ordered == ids
