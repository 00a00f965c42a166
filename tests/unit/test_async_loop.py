"""An async job's database writes never block its event loop.

Another connection holds SQLite's write lock while the job's step result, progress and
log line wait for it: the loop must go on running other tasks meanwhile.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

from conftest import wait_until

from durably import AsyncStepContext, create_durably, define_job
from durably.plugins import with_log_persistence


def test_step_progress_and_log_writes_wait_for_the_database_off_the_event_loop(
    tmp_path: Path,
) -> None:
    db = tmp_path / "d.db"
    fn_returned = threading.Event()
    ticks: list[int] = []

    @define_job(name="writes")
    async def writes(step: AsyncStepContext, payload: Any) -> str:
        def work() -> str:
            blocker.execute("BEGIN IMMEDIATE")  # this step's own persist must wait now
            fn_returned.set()
            return "done"

        await step.run("work", work)
        step.progress(1, 1, "half")
        step.log.info("logged")
        return await step.run("more", lambda: "more")

    d = create_durably(f"sqlite:///{db}?timeout=60", polling_interval=0.05)
    d.migrate()
    d.use(with_log_persistence())
    d.register({"writes": writes})
    run = d.jobs.writes.trigger({})
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

    def hold_the_lock_while_the_loop_ticks() -> None:
        wait_until(fn_returned.is_set)
        try:
            start = len(ticks)
            # a loop blocked by the waiting write would tick no more
            wait_until(lambda: len(ticks) >= start + 20)
        finally:
            blocker.execute("ROLLBACK")

    async def main() -> None:
        async def tick() -> None:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        holder = asyncio.create_task(asyncio.to_thread(hold_the_lock_while_the_loop_ticks))
        assert await d.process_one_async()
        await holder
        ticker.cancel()

    asyncio.run(main())
    blocker.close()
    try:
        finished = d.get_run(run.id)
        assert finished is not None and finished.status == "completed"
        assert finished.progress is not None and finished.progress.message == "half"
        assert [entry.message for entry in d.get_logs(run.id)] == ["logged"]
    finally:
        d.close()
