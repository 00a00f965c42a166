"""The worker: claim slots, wake-ups and graceful stop.

Each of the `max_concurrent_runs` slots is a thread that claims and executes runs one
after another. An idle slot waits on a condition that an in-process trigger signals;
polling is the fallback. Leases (claims, heartbeats, final writes) belong to the
`LeaseKeeper`; a run's steps to its `RunExecution`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from ._errors import describe
from ._execution import Conclusion, RunExecution
from ._lease import Lease, LeaseKeeper
from ._runtime import Runtime
from ._store import Complete, Fail

logger = logging.getLogger("durably.worker")

_MAX_BACKOFF = 30.0


class Worker:
    """Claims and executes runs for one Durably instance."""

    def __init__(self, runtime: Runtime, keeper: LeaseKeeper) -> None:
        self._rt = runtime
        self.keeper = keeper
        self._cond = threading.Condition()
        self._wake_seq = 0
        self._stopping = threading.Event()
        self._slots: list[threading.Thread] = []
        # the slot threads still inside their loop, guarded by `_cond`: `stop` waits on it
        self._live: set[threading.Thread] = set()
        self._lifecycle = threading.Lock()
        self._unlisten: Callable[[], None] | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- wake-ups ----------------------------------------------------------------------

    def wake(self) -> None:
        """Make idle slots claim now (a run was triggered or retried in this process)."""
        with self._cond:
            self._wake_seq += 1
            self._cond.notify_all()

    def _idle_wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            if self._wake_seq == seen and not self._stopping.is_set():
                self._cond.wait(timeout)

    # -- executing a lease -------------------------------------------------------------

    def execute(self, lease: Lease, *, chain: bool = False) -> Lease | None:
        """Execute a claimed run in this thread and make its final write.

        With `chain`, that write also claims the next run (unless the worker is stopping),
        which is returned for the caller to execute next.
        """
        execution = RunExecution(self._rt, lease, self._rt.jobs.get(lease.job_name))
        return self._conclude(execution, execution.run_sync(), chain)

    async def execute_async(self, lease: Lease) -> None:
        """Execute a claimed run for `process_one_async`.

        A sync job runs whole in a thread, final write included, so that cancelling the
        awaiting task cannot end the lease while the job goes on in its thread. An async
        job runs on this loop; cancelling it releases the run.
        """
        job = self._rt.jobs.get(lease.job_name)
        if not job.is_async:
            await asyncio.to_thread(self.execute, lease)
            return
        execution = RunExecution(self._rt, lease, job)
        conclusion = await execution.run_async()
        # shielded: the lease's last write happens even if the awaiting task is cancelled
        await asyncio.shield(asyncio.to_thread(self._conclude, execution, conclusion, False))

    def _conclude(
        self, execution: RunExecution, conclusion: Conclusion, chain: bool
    ) -> Lease | None:
        lease = execution.lease
        if conclusion.abandoned:
            self.keeper.abandon(lease)
            return None
        final = conclusion.final
        chain = (
            chain
            and not self._stopping.is_set()
            and conclusion.reraise is None
            and isinstance(final, (Complete, Fail))
        )
        try:
            done, following = self.keeper.finish(lease, final, chain=chain)
        except Exception as exc:
            execution.store_failed(exc)
            done, following = False, None
        execution.announce(conclusion, done)
        if conclusion.reraise is not None:
            raise conclusion.reraise
        return following

    # -- background slots --------------------------------------------------------------

    def _wait_for(self, slots: list[threading.Thread], timeout: float | None) -> bool:
        """Wait until every thread of `slots` has left its loop; False after `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: self._live.isdisjoint(slots), timeout)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._slots)

    def start(self) -> None:
        with self._lifecycle:
            if self._slots and not self._stopping.is_set():
                return
            self._stopping.clear()
            listen = getattr(self._rt.store.db.dialect, "listen", None)
            if listen is not None and self._unlisten is None:
                self._unlisten = listen(self.wake)
            self._slots = [
                threading.Thread(target=self._slot_loop, name=f"durably-slot-{i}", daemon=True)
                for i in range(self._rt.settings.max_concurrent_runs)
            ]
            with self._cond:
                self._live.update(self._slots)
            for thread in self._slots:
                thread.start()

    def _slot_loop(self) -> None:
        try:
            self._claim_and_execute()
        finally:
            with self._cond:
                self._live.discard(threading.current_thread())
                self._cond.notify_all()

    def _claim_and_execute(self) -> None:
        rt = self._rt
        backoff = 0.0
        while not self._stopping.is_set():
            seen = self._wake_seq
            try:
                lease = self.keeper.claim()
            except Exception as exc:
                backoff = min(_MAX_BACKOFF, max(rt.settings.polling_interval, backoff * 2 or 0.1))
                logger.warning("claim failed (retrying in %.1f s): %s", backoff, exc)
                rt.events.emit("worker:error", error=describe(exc), context="claim", run_id=None)
                self._stopping.wait(backoff)
                continue
            backoff = 0.0
            if lease is None:
                self._idle_wait(seen, rt.settings.polling_interval)
                continue
            while lease is not None:
                current, lease = lease, None
                try:
                    lease = self.execute(current, chain=True)
                except Exception as exc:  # never let a run kill the slot
                    logger.exception("unexpected error executing %s", current.run_id)
                    self.keeper.abandon(current)
                    rt.events.emit(
                        "worker:error",
                        error=describe(exc),
                        context="execute",
                        run_id=current.run_id,
                    )

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; wait for runs in flight (released at their next step after timeout).

        Safe to interrupt (Ctrl-C) and call again: the waits are on a condition, never a
        `Thread.join`, which on Python 3.11 marks the thread it waits for as stopped when
        a signal handler's exception interrupts it, so that the next call would return at
        once and leave the run in flight unreleased.
        """
        with self._lifecycle:
            self._stopping.set()
            self.wake()
            slots = list(self._slots)
            if not self._wait_for(slots, None if timeout is None else max(0.0, timeout)):
                self.keeper.release_all()
                self._wait_for(slots, None)
            for thread in slots:
                thread.join()  # it has left its loop: this only sees it end
            self._slots = []
            unlisten, self._unlisten = self._unlisten, None
            if unlisten is not None:
                unlisten()
