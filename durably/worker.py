"""The worker: claim slots, heartbeat, stale recovery, wake-ups and graceful stop.

Each of the `max_concurrent_runs` slots is a thread that claims and executes runs one
after another; there is no dispatcher thread between claiming and executing. An idle
slot waits on a condition that an in-process trigger signals; polling is the fallback.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from .clock import to_db
from .execution import RunExecution, describe
from .store import Lease

if TYPE_CHECKING:
    from .app import Durably

logger = logging.getLogger("durably.worker")

_MAX_BACKOFF = 30.0


class Worker:
    """Claims and executes runs for one Durably instance."""

    def __init__(self, durably: Durably) -> None:
        self._d = durably
        self.owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._cond = threading.Condition()
        self._wake_seq = 0
        self._stopping = threading.Event()
        self._slots: list[threading.Thread] = []
        self._active: dict[str, Lease] = {}
        self._active_lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._hb_lock = threading.Lock()
        self._recovery_lock = threading.Lock()
        self._next_recovery = 0.0
        self._lifecycle = threading.Lock()
        self._unlisten: Callable[[], None] | None = None

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

    # -- claiming ----------------------------------------------------------------------

    def claim(self) -> Lease | None:
        """Recover stale runs when due, then claim the oldest claimable run."""
        self._recover_when_due()
        return self._d._store.claim(self._d._job_names(), self.owner)

    def _chained_claim(self) -> tuple[tuple[str, ...], str] | None:
        """What the next claim needs, for the transaction that finishes a run; None once
        the worker stops, so a stopping worker takes no new run."""
        if self._stopping.is_set():
            return None
        self._recover_when_due()
        return self._d._job_names(), self.owner

    def _recover_when_due(self) -> None:
        d = self._d
        now = d._clock.monotonic()
        if now >= self._next_recovery and self._recovery_lock.acquire(blocking=False):
            try:
                if now >= self._next_recovery:
                    cutoff = d._clock.now() - timedelta(seconds=d.stale_threshold)
                    d._store.recover_stale(to_db(cutoff))
                    self._next_recovery = now + max(0.05, d.stale_threshold / 4)
            finally:
                self._recovery_lock.release()

    def execute(self, lease: Lease, *, chain: bool = False) -> Lease | None:
        """Run a claimed lease in this thread, heartbeating while it runs.

        With `chain`, the run's final write also claims the next run (one commit fewer per
        run), which is returned for the caller to execute next.
        """
        job = self._d._job_for(lease.job_name)
        execution = RunExecution(self._d, lease, job)
        if chain:
            execution.claim_next = self._chained_claim
        self.track(lease)
        try:
            execution.run_sync()
        finally:
            self.untrack(lease)
        return execution.next_lease

    def active_lease(self, run_id: str) -> Lease | None:
        with self._active_lock:
            return self._active.get(run_id)

    def track(self, lease: Lease) -> None:
        """Heartbeat `lease` and let in-process cancel/stop reach it."""
        lease.last_write = self._d._clock.monotonic()
        with self._active_lock:
            self._active[lease.run_id] = lease
        self._ensure_heartbeat()

    def untrack(self, lease: Lease) -> None:
        with self._active_lock:
            # the run may have been retried and claimed again here under a new lease
            if self._active.get(lease.run_id) is lease:
                del self._active[lease.run_id]

    # -- background slots --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._slots)

    def start(self) -> None:
        with self._lifecycle:
            if self._slots and not self._stopping.is_set():
                return
            self._stopping.clear()
            listen = getattr(self._d.dialect, "listen", None)
            if listen is not None and self._unlisten is None:
                self._unlisten = listen(self.wake)
            self._slots = [
                threading.Thread(target=self._slot_loop, name=f"durably-slot-{i}", daemon=True)
                for i in range(self._d.max_concurrent_runs)
            ]
            for thread in self._slots:
                thread.start()

    def _slot_loop(self) -> None:
        d = self._d
        backoff = 0.0
        while not self._stopping.is_set():
            seen = self._wake_seq
            try:
                lease = self.claim()
            except Exception as exc:
                backoff = min(_MAX_BACKOFF, max(d.polling_interval, backoff * 2 or 0.1))
                logger.warning("claim failed (retrying in %.1f s): %s", backoff, exc)
                d._events.emit("worker:error", error=describe(exc), context="claim", run_id=None)
                self._stopping.wait(backoff)
                continue
            backoff = 0.0
            if lease is None:
                self._idle_wait(seen, d.polling_interval)
                continue
            while lease is not None:
                current, lease = lease, None
                try:
                    lease = self.execute(current, chain=True)
                except Exception as exc:  # never let a run kill the slot
                    logger.exception("unexpected error executing %s", current.run_id)
                    d._events.emit(
                        "worker:error",
                        error=describe(exc),
                        context="execute",
                        run_id=current.run_id,
                    )

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; wait for runs in flight (released at their next step after timeout)."""
        with self._lifecycle:
            self._stopping.set()
            self.wake()
            slots = list(self._slots)
            deadline = None if timeout is None else self._d._clock.monotonic() + timeout
            for thread in slots:
                remaining = (
                    None if deadline is None else max(0.0, deadline - self._d._clock.monotonic())
                )
                thread.join(remaining)
            if any(t.is_alive() for t in slots):
                with self._active_lock:
                    for lease in self._active.values():
                        lease.release_requested = True
                for thread in slots:
                    thread.join()
            self._slots = []
            unlisten, self._unlisten = self._unlisten, None
            if unlisten is not None:
                unlisten()

    # -- heartbeat ---------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        with self._hb_lock:
            if self._heartbeat is not None and self._heartbeat.is_alive():
                return
            self._heartbeat_stop.clear()
            self._heartbeat = threading.Thread(
                target=self._heartbeat_loop, name="durably-heartbeat", daemon=True
            )
            self._heartbeat.start()

    def _heartbeat_loop(self) -> None:
        d = self._d
        interval = d.heartbeat_interval
        while not self._heartbeat_stop.wait(interval):
            with self._active_lock:
                leases = list(self._active.values())
            now = d._clock.monotonic()
            for lease in leases:
                if lease.lost or now - lease.last_write < interval / 2:
                    continue
                try:
                    if not d._store.heartbeat(lease):
                        # cancelled elsewhere or reclaimed after going stale
                        lease.lost = True
                except Exception as exc:
                    d._events.emit(
                        "worker:error",
                        error=describe(exc),
                        context="heartbeat",
                        run_id=lease.run_id,
                    )

    def close(self) -> None:
        self._heartbeat_stop.set()
        hb = self._heartbeat
        if hb is not None and hb is not threading.current_thread():
            hb.join(timeout=5)
