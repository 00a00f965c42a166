"""Executing one claimed run: replay, steps, progress, logs, and the final CAS write."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .errors import InputValidationError
from .ids import new_ulid
from .records import LogEntry
from .step import AsyncStepContext, RunInterrupted, StepContext, StoreFailure
from .store import Lease, dumps

if TYPE_CHECKING:
    from .app import Durably
    from .events import Progress
    from .jobs import JobDefinition

logger = logging.getLogger("durably.worker")

_loops = threading.local()


def describe(exc: BaseException) -> str:
    """`"ZeroDivisionError: division by zero"`: the stored form of an error."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _thread_loop() -> asyncio.AbstractEventLoop:
    """A private event loop per worker thread, reused across async runs."""
    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
    return loop


class RunExecution:
    """The state of one run while this process executes it."""

    def __init__(self, durably: Durably, lease: Lease, job: JobDefinition[Any, Any]) -> None:
        self.durably = durably
        self.store = durably._store
        self.events = durably._events
        self.clock = durably._clock
        self.lease = lease
        self.job = job
        self.completed: dict[str, str | None] = {}
        self.seen: set[str] = set()
        self.next_index = 0
        self.current_step: str | None = None
        self.failed_step: str | None = None
        self._started_mono = 0.0
        self._step_mono = 0.0
        # set by a worker that goes on claiming: (job names, owner) of the next claim,
        # made in the transaction that finishes this run; its result lands in next_lease
        self.claim_next: Callable[[], tuple[Sequence[str], str] | None] | None = None
        self.next_lease: Lease | None = None

    # -- called by StepContext ---------------------------------------------------------

    def check_boundary(self) -> None:
        lease = self.lease
        if lease.cancel_requested or lease.lost:
            raise RunInterrupted("cancelled" if lease.cancel_requested else "lost")
        if lease.release_requested:
            raise RunInterrupted("released")

    def step_started(self, index: int, name: str) -> str:
        self.current_step = name
        if self.events.wants("step:start"):
            self.events.emit(
                "step:start",
                run_id=self.lease.run_id,
                job_name=self.lease.job_name,
                step_name=name,
                step_index=index,
            )
        self._step_mono = self.clock.monotonic()
        return self.store.now()

    def step_completed(self, index: int, name: str, output_json: str, started: str) -> None:
        self.failed_step = None
        self._persist(index, name, "completed", output_json, None, started)
        if self.events.wants("step:complete"):
            self.events.emit(
                "step:complete",
                run_id=self.lease.run_id,
                job_name=self.lease.job_name,
                step_name=name,
                step_index=index,
                output=json.loads(output_json),
                duration=self.clock.monotonic() - self._step_mono,
            )

    def step_failed(self, index: int, name: str, exc: BaseException, started: str) -> None:
        if isinstance(exc, (RunInterrupted, StoreFailure)):
            return
        self.failed_step = name
        if not isinstance(exc, Exception):
            return  # KeyboardInterrupt & co: the run is released, not failed
        error = describe(exc)
        self._persist(index, name, "failed", None, error, started)
        self.events.emit(
            "step:fail",
            run_id=self.lease.run_id,
            job_name=self.lease.job_name,
            step_name=name,
            step_index=index,
            error=error,
        )

    def _persist(
        self,
        index: int,
        name: str,
        status: str,
        output_json: str | None,
        error: str | None,
        started: str,
    ) -> None:
        try:
            ok = self.store.persist_step(
                self.lease,
                index=index,
                name=name,
                status=status,
                output_json=output_json,
                error=error,
                started_at=started,
            )
        except Exception as exc:
            raise StoreFailure(exc) from exc
        if not ok:
            self.lease.lost = True
            raise RunInterrupted("lost")
        self.lease.last_write = self.clock.monotonic()

    def progress(self, progress: Progress) -> None:
        self.check_boundary()
        try:
            ok = self.store.set_progress(self.lease, progress)
        except Exception as exc:
            raise StoreFailure(exc) from exc
        if not ok:
            self.lease.lost = True
            raise RunInterrupted("lost")
        self.events.emit(
            "run:progress",
            run_id=self.lease.run_id,
            job_name=self.lease.job_name,
            progress=progress,
        )

    def log(self, level: str, message: str, data: Any) -> None:
        self.events.emit(
            "log:write",
            run_id=self.lease.run_id,
            step_name=self.current_step,
            level=level,
            message=str(message),
            data=data,
        )

    # -- running the job ---------------------------------------------------------------

    def _prepare(self) -> Any:
        """Load what a resume needs and emit run:start; returns the validated payload."""
        lease = self.lease
        self._started_mono = self.clock.monotonic()
        if not lease.first_claim:
            try:
                self.completed = self.store.completed_steps(lease.run_id)
            except Exception as exc:
                raise StoreFailure(exc) from exc
        self.events.emit(
            "run:start", run_id=lease.run_id, job_name=lease.job_name, payload=lease.payload
        )
        return self.job.validate_input(lease.payload)

    def run_sync(self) -> None:
        """Execute the job in this thread (async jobs on this thread's private loop)."""
        try:
            payload = self._prepare()
            if self.job.is_async:
                result = _thread_loop().run_until_complete(
                    self.job.fn(AsyncStepContext(self), payload)
                )
            else:
                result = self.job.fn(StepContext(self), payload)
                if inspect.isawaitable(result):
                    result = _thread_loop().run_until_complete(result)
        except BaseException as exc:
            self._conclude_error(exc)
            return
        self._conclude_result(result)

    async def run_async(self) -> None:
        """Execute the job on the running loop (sync jobs in a thread)."""
        if not self.job.is_async:
            await asyncio.to_thread(self.run_sync)
            return
        try:
            payload = await asyncio.to_thread(self._prepare)
            result = await self.job.fn(AsyncStepContext(self), payload)
        except BaseException as exc:
            self._conclude_error(exc)
            return
        await asyncio.to_thread(self._conclude_result, result)

    def _conclude_result(self, result: Any) -> None:
        lease = self.lease
        try:
            output = self.job.validate_output(result)
            output_json = self.job.dump_output(output)
            text = dumps(output_json)
        except (ValidationError, ValueError, TypeError) as exc:
            self._fail(f"invalid output of job {lease.job_name!r}: {describe(exc)}", None)
            return
        try:
            done = self._finish("complete", output=text)
        except Exception as exc:
            self._store_failed(exc)
            return
        if done:
            self.events.emit(
                "run:complete",
                run_id=lease.run_id,
                job_name=lease.job_name,
                output=output_json,
                duration=self.clock.monotonic() - self._started_mono,
            )

    def _conclude_error(self, exc: BaseException) -> None:
        lease = self.lease
        if isinstance(exc, RunInterrupted):
            if exc.reason == "released":
                try:
                    self.store.release(lease)
                except Exception as err:
                    self._store_failed(err)
            return
        if isinstance(exc, StoreFailure):
            cause = exc.__cause__ or exc
            self._store_failed(cause)
            return
        if not isinstance(exc, Exception):
            # KeyboardInterrupt, SystemExit: give the run back so it resumes at once
            try:
                self.store.release(lease)
            except Exception as err:
                self._store_failed(err)
            raise exc
        if isinstance(exc, InputValidationError):
            self._fail(describe(exc), None)
            return
        self._fail(describe(exc), self.failed_step)

    def _fail(self, error: str, step_name: str | None) -> None:
        lease = self.lease
        try:
            done = self._finish("fail", error=error, step=step_name)
        except Exception as exc:
            self._store_failed(exc)
            return
        if done:
            self.events.emit(
                "run:fail",
                run_id=lease.run_id,
                job_name=lease.job_name,
                error=error,
                failed_step_name=step_name,
            )

    def _finish(self, key: str, **params: Any) -> bool:
        """The final compare-and-set write, claiming the next run with it when asked to."""
        claim = self.claim_next() if self.claim_next is not None else None
        if claim is None:
            return self.store.finish(self.lease, key, **params)
        job_names, owner = claim
        done, self.next_lease = self.store.finish_and_claim(
            self.lease, key, job_names, owner, **params
        )
        return done

    def _store_failed(self, exc: BaseException) -> None:
        logger.warning("database error while running %s: %s", self.lease.run_id, exc)
        self.events.emit(
            "worker:error", error=describe(exc), context="run", run_id=self.lease.run_id
        )


def log_entry_from_event(event: Any) -> LogEntry:
    """The persisted form of a `log:write` event."""
    return LogEntry(
        id=new_ulid(),
        run_id=event.run_id,
        step_name=event.step_name,
        level=event.level,
        message=event.message,
        data=event.data,
        created_at=event.timestamp,
    )
