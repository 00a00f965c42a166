"""A worker's hold on a run, from its claim to its final write: one object, one lifecycle.

    claim ──> heartbeat (every heartbeat_interval) ──> vouch at each step boundary ──> final write

Whoever holds a lease heartbeats it; nobody else touches the run's execution state. Two
clocks, two jobs: the database's clock (on servers) decides when others may take a run
over; this process's monotonic clock decides when it can no longer vouch for its own
lease (its last confirmed write is older than `stale_threshold` minus a heartbeat), even
if it was frozen and cannot tell.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Literal

from ._errors import describe
from ._runtime import Runtime
from ._store import Claim, ClaimRequest, Final

logger = logging.getLogger("durably.worker")

Interruption = Literal["cancelled", "released", "lost"]


class RunInterrupted(BaseException):
    """Stops a job at a step boundary: the run was cancelled, released or its lease lost.

    A BaseException so that a job's `except Exception` cannot swallow it.
    """

    def __init__(self, reason: Interruption) -> None:
        super().__init__(reason)
        self.reason: Interruption = reason


class StoreFailure(BaseException):
    """The database failed while writing for a run; it is left for stale recovery."""


class Lease:
    """One claimed run while this process executes it."""

    def __init__(self, claim: Claim, runtime: Runtime, confirmed: float) -> None:
        self.claim = claim
        self._rt = runtime
        # monotonic time at which the last write that proved the claim was sent
        self.confirmed = confirmed
        # set from other threads, read at step boundaries
        self.cancel_requested = False
        self.release_requested = False
        self.lost = False

    @property
    def run_id(self) -> str:
        return self.claim.run_id

    @property
    def job_name(self) -> str:
        return self.claim.job_name

    @property
    def deadline(self) -> float:
        """Until when no other worker can have taken the run over (monotonic)."""
        settings = self._rt.settings
        return self.confirmed + settings.stale_threshold - settings.heartbeat_interval

    def late(self) -> bool:
        """Whether this process can no longer vouch for the lease without asking (it may
        have been frozen): checked last before a step function starts, at no cost."""
        return self._rt.clock.monotonic() > self.deadline

    def interruption(self) -> Interruption | None:
        """Why the run must stop, as far as this process knows without asking."""
        if self.cancel_requested:
            return "cancelled"
        if self.lost:
            return "lost"
        if self.release_requested:
            return "released"
        return None

    def check(self) -> None:
        """Raise `RunInterrupted` if this process already knows the run must stop."""
        reason = self.interruption()
        if reason is not None:
            raise RunInterrupted(reason)

    def vouch(self) -> None:
        """Make sure the run is still ours and not cancelled, before a step function runs.

        Fencing makes a lost lease's writes harmless; only this check keeps a worker that
        lost its run (frozen, partitioned, cancelled from another process) from running
        the step's side effect again.
        """
        self.check()
        store = self._rt.store
        try:
            sent = self._rt.clock.monotonic()
            if sent > self.deadline:
                # it may have been frozen past its deadline: prove the claim again first
                self.confirm(store.leased.heartbeat(self.claim), sent)
            state = store.reads.lease_state(self.claim)
        except RunInterrupted:
            raise
        except Exception as exc:
            raise StoreFailure(exc) from exc
        if state == "cancelled":
            self.cancel_requested = True
        elif state == "lost":
            self.lost = True
        self.check()

    def confirm(self, ok: bool, sent: float) -> None:
        """Record the outcome of a fenced write sent at `sent`; False means the run is gone."""
        if ok:
            self.confirmed = max(self.confirmed, sent)
            return
        self.lost = True
        raise RunInterrupted("lost")


class LeaseKeeper:
    """Claims runs for one worker, heartbeats every lease it holds, makes final writes."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self.owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._closing = threading.Event()
        self._recovery_lock = threading.Lock()
        self._next_recovery = 0.0

    def request(self) -> ClaimRequest:
        return ClaimRequest(self._rt.jobs.names(), self.owner)

    def claim(self) -> Lease | None:
        """Recover stale runs when due, then claim the oldest claimable run."""
        self._recover_when_due()
        sent = self._rt.clock.monotonic()
        claim = self._rt.store.claims.claim(self.request())
        return None if claim is None else self._hold(claim, sent)

    def finish(
        self, lease: Lease, final: Final | None, *, chain: bool
    ) -> tuple[bool, Lease | None]:
        """Make the run's final write (None: there is none to make) and let it go.

        With `chain`, the same transaction claims the next run, whose lease is held (and
        heartbeated) from that moment. When the final write did not apply, the run
        stopped here without finishing: its concurrency key is freed.
        """
        done, claim, sent = False, None, self._rt.clock.monotonic()
        try:
            if final is not None:
                then = None
                if chain:
                    self._recover_when_due()
                    then = self.request()
                done, claim = self._rt.store.leased.finish(lease.claim, final, then)
            if not done:
                self._rt.store.leased.acknowledge_stop(lease.claim)
        finally:
            self._let_go(lease)
        return done, None if claim is None else self._hold(claim, sent)

    def abandon(self, lease: Lease) -> None:
        """Stop holding a run without any write (the database failed): stale recovery
        gives it back after `stale_threshold`."""
        self._let_go(lease)

    def active(self, run_id: str) -> Lease | None:
        with self._lock:
            return self._leases.get(run_id)

    def release_all(self) -> None:
        """Ask every held run to go back to pending at its next step boundary."""
        with self._lock:
            for lease in self._leases.values():
                lease.release_requested = True

    def close(self) -> None:
        self._closing.set()
        thread = self._heartbeat
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # -- holding -----------------------------------------------------------------------

    def _hold(self, claim: Claim, sent: float) -> Lease:
        lease = Lease(claim, self._rt, sent)
        with self._lock:
            self._leases[claim.run_id] = lease
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = threading.Thread(
                    target=self._heartbeat_loop, name="durably-heartbeat", daemon=True
                )
                self._heartbeat.start()
        return lease

    def _let_go(self, lease: Lease) -> None:
        with self._lock:
            # the run may have been retried and claimed again here under a new lease
            if self._leases.get(lease.run_id) is lease:
                del self._leases[lease.run_id]

    def _heartbeat_loop(self) -> None:
        clock = self._rt.clock
        interval = self._rt.settings.heartbeat_interval
        due = clock.monotonic() + interval
        while not self._closing.wait(max(0.0, due - clock.monotonic())):
            due = max(due + interval, clock.monotonic())
            with self._lock:
                leases = list(self._leases.values())
            for lease in leases:
                if not lease.lost:
                    self._beat(lease)

    def _beat(self, lease: Lease) -> None:
        rt = self._rt
        sent = rt.clock.monotonic()
        try:
            ok = rt.store.leased.heartbeat(lease.claim)
        except Exception as exc:
            rt.events.emit(
                "worker:error", error=describe(exc), context="heartbeat", run_id=lease.run_id
            )
            if rt.clock.monotonic() > lease.deadline:
                # it cannot prove its claim any more: another worker may take the run now
                lease.lost = True
            return
        if ok:
            lease.confirmed = max(lease.confirmed, sent)
        else:
            lease.lost = True  # cancelled without a key to hold, reclaimed, deleted

    def _recover_when_due(self) -> None:
        rt = self._rt
        now = rt.clock.monotonic()
        if now < self._next_recovery or not self._recovery_lock.acquire(blocking=False):
            return
        try:
            if now >= self._next_recovery:
                threshold = rt.settings.stale_threshold
                rt.store.claims.recover_stale(threshold)
                self._next_recovery = now + max(0.05, threshold / 4)
        finally:
            self._recovery_lock.release()
