"""Executing one claimed run: replay, steps, progress, logs, and what the run concluded.

The execution never makes the run's final write itself: it returns a `Conclusion`, which
the worker hands to the lease keeper (`_lease`), then announces with `announce`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ._errors import DuplicateStepError, InputValidationError, describe
from ._events import Progress
from ._ids import new_ulid
from ._jobs import JobDefinition
from ._lease import Lease, RunInterrupted, StoreFailure
from ._records import LogEntry
from ._runtime import Runtime
from ._step import MISSING, AsyncStepContext, StepContext
from ._store import Complete, Fail, Final, Release, dumps
from ._text import check_name, check_size, clean_message

logger = logging.getLogger("durably.worker")

_loops = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    """A private event loop per worker thread, reused across async runs."""
    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
    return loop


@dataclass(frozen=True)
class Conclusion:
    """How a run ended here: the final write to make, and what to say about it."""

    final: Final | None  # None: the run stopped without one (cancelled, lost)
    abandoned: bool = False  # the database failed: no write at all, stale recovery takes it
    output: Any = None  # the output's JSON form, for run:complete
    reraise: BaseException | None = None  # KeyboardInterrupt & co., after the release


class RunExecution:
    """The state of one run while this process executes it (the `StepHost` of its steps)."""

    def __init__(self, runtime: Runtime, lease: Lease, job: JobDefinition[Any, Any]) -> None:
        self._rt = runtime
        self.lease = lease
        self.job = job
        self.completed: dict[str, str | None] = {}
        self.seen: set[str] = set()
        self.next_index = 0
        # completed steps not replayed yet: the job is re-running code that already ran,
        # so its logs are neither emitted nor stored again
        self._replays_left = 0
        self.current_step: str | None = None
        self.failed_step: str | None = None
        self._started = 0.0
        self._step_started = 0.0
        # writes an async job started in the background (progress, logs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[asyncio.Future[Any]] = []

    @property
    def run_id(self) -> str:
        return self.lease.run_id

    @property
    def job_name(self) -> str:
        return self.lease.job_name

    @property
    def max_payload_bytes(self) -> int:
        return self._rt.settings.max_payload_bytes

    # -- the StepHost protocol ---------------------------------------------------------

    def begin_step(self, name: str) -> tuple[int, Any]:
        self.lease.check()
        if not isinstance(name, str) or not name:
            raise TypeError(f"a step name must be a non-empty string, got {name!r}")
        check_name("step name", name)
        if name in self.seen:
            self.failed_step = name
            raise DuplicateStepError(self.run_id, name)
        self.seen.add(name)
        index = self.next_index
        self.next_index = index + 1
        stored = self.completed.get(name, MISSING)
        if stored is not MISSING:
            self._replays_left -= 1
        else:
            self._replays_left = 0
        return index, stored

    def vouch(self) -> None:
        self.lease.vouch()

    def late(self) -> bool:
        return self.lease.late() or self.lease.interruption() is not None

    def step_started(self, index: int, name: str) -> str:
        self.current_step = name
        self._rt.events.emit(
            "step:start",
            run_id=self.run_id,
            job_name=self.job_name,
            step_name=name,
            step_index=index,
        )
        self._step_started = self._rt.clock.monotonic()
        return self._rt.store.now()

    def step_ended(self) -> None:
        self.current_step = None

    def step_completed(self, index: int, name: str, text: str, value: Any, started: str) -> None:
        self.failed_step = None
        self._persist(index, name, "completed", text, None, started)
        self._rt.events.emit(
            "step:complete",
            run_id=self.run_id,
            job_name=self.job_name,
            step_name=name,
            step_index=index,
            output=value,
            duration=self._rt.clock.monotonic() - self._step_started,
        )

    def step_failed(self, index: int, name: str, exc: BaseException, started: str) -> None:
        if isinstance(exc, (RunInterrupted, StoreFailure)):
            return
        self.failed_step = name
        if not isinstance(exc, Exception):
            return  # KeyboardInterrupt & co: the run is released, not failed
        error = clean_message(describe(exc))
        self._persist(index, name, "failed", None, error, started)
        self._rt.events.emit(
            "step:fail",
            run_id=self.run_id,
            job_name=self.job_name,
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
        self._write(
            lambda: self._rt.store.leased.persist_step(
                self.lease.claim,
                index=index,
                name=name,
                status=status,
                output_json=output_json,
                error=error,
                started_at=started,
            )
        )

    def _write(self, write: Callable[[], bool]) -> None:
        """A fenced write for the run; a write that matched nothing means the run is gone."""
        sent = self._rt.clock.monotonic()
        try:
            ok = write()
        except Exception as exc:
            raise StoreFailure(exc) from exc
        self.lease.confirm(ok, sent)

    def progress(self, progress: Progress) -> None:
        self.lease.check()
        if progress.message is not None:
            progress = Progress(progress.current, progress.total, clean_message(progress.message))

        def write() -> None:
            self._write(lambda: self._rt.store.leased.set_progress(self.lease.claim, progress))
            self._rt.events.emit(
                "run:progress", run_id=self.run_id, job_name=self.job_name, progress=progress
            )

        self._in_background(write)

    def log(self, level: str, message: str, data: Any) -> None:
        if self._replays_left > 0:
            return
        rt = self._rt
        event = rt.events.emit(
            "log:write",
            run_id=self.run_id,
            step_name=self.current_step,
            level=level,
            message=clean_message(str(message)),
            data=data,
        )
        if rt.persist_logs:
            entry = LogEntry(
                id=new_ulid(),
                run_id=self.run_id,
                step_name=self.current_step,
                level=level,
                message=clean_message(str(message)),
                data=data,
                created_at=event.timestamp if event is not None else rt.clock.now(),
            )
            self._in_background(lambda: self._store_log(entry))

    def _store_log(self, entry: LogEntry) -> None:
        try:
            self._rt.store.leased.insert_log(self.lease.claim, entry)
        except Exception as exc:  # a log line never fails its run
            self._rt.events.emit(
                "worker:error", error=describe(exc), context="log", run_id=self.run_id
            )

    def _in_background(self, write: Callable[[], None]) -> None:
        """Run `write` now, or in a thread when the job runs on an event loop."""
        if self._loop is None:
            write()
        else:
            self._pending.append(self._loop.run_in_executor(None, write))

    async def settle(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            await future

    # -- running the job ---------------------------------------------------------------

    def _prepare(self) -> Any:
        """Load what a resume needs and emit run:start; returns the validated payload."""
        lease = self.lease
        self._started = self._rt.clock.monotonic()
        if not lease.claim.first:
            try:
                self.completed = self._rt.store.reads.completed_steps(lease.run_id)
            except Exception as exc:
                raise StoreFailure(exc) from exc
            self._replays_left = len(self.completed)
        self._rt.announcements.wait(lease.run_id)  # its run:trigger/run:retry goes first
        self._rt.events.emit(
            "run:start", run_id=lease.run_id, job_name=lease.job_name, payload=lease.claim.payload
        )
        return self.job.validate_input(lease.claim.payload)

    def run_sync(self) -> Conclusion:
        """Execute the job in this thread (async jobs on this thread's private loop)."""
        try:
            payload = self._prepare()
            if self.job.is_async:
                result = _thread_loop().run_until_complete(self._run_coroutine(payload))
            else:
                result = self.job.fn(StepContext(self), payload)
                if inspect.isawaitable(result):
                    result = _thread_loop().run_until_complete(result)
        except BaseException as exc:
            return self._conclude_error(exc)
        return self._conclude_result(result)

    async def run_async(self) -> Conclusion:
        """Execute an async job on the running loop (database calls in threads)."""
        try:
            payload = await asyncio.to_thread(self._prepare)
            result = await self._run_coroutine(payload)
        except BaseException as exc:
            return self._conclude_error(exc)
        return self._conclude_result(result)

    async def _run_coroutine(self, payload: Any) -> Any:
        self._loop = asyncio.get_running_loop()
        try:
            result = await self.job.fn(AsyncStepContext(self), payload)
            await self.settle()
        finally:
            self._loop = None
        return result

    def _conclude_result(self, result: Any) -> Conclusion:
        try:
            output = self.job.validate_output(result)
            output_json = self.job.dump_output(output)
            text = dumps(output_json)
            check_size(f"the output of job {self.job_name!r}", text, self.max_payload_bytes)
        except (ValidationError, ValueError, TypeError) as exc:
            message = f"invalid output of job {self.job_name!r}: {describe(exc)}"
            return Conclusion(Fail(clean_message(message), None))
        return Conclusion(Complete(text), output=output_json)

    def _conclude_error(self, exc: BaseException) -> Conclusion:
        if isinstance(exc, RunInterrupted):
            return Conclusion(Release() if exc.reason == "released" else None)
        if isinstance(exc, StoreFailure):
            self.store_failed(exc.__cause__ or exc)
            return Conclusion(None, abandoned=True)
        if not isinstance(exc, Exception):
            # KeyboardInterrupt, SystemExit, a cancelled task: give the run back so it
            # resumes at once, then let the exception go on
            return Conclusion(Release(), reraise=exc)
        step = None if isinstance(exc, InputValidationError) else self.failed_step
        return Conclusion(Fail(clean_message(describe(exc)), step))

    def store_failed(self, exc: BaseException) -> None:
        logger.warning("database error while running %s: %s", self.run_id, exc)
        self._rt.events.emit("worker:error", error=describe(exc), context="run", run_id=self.run_id)

    def announce(self, conclusion: Conclusion, done: bool) -> None:
        """Emit the run's final event once its final write applied."""
        final = conclusion.final
        if not done or final is None:
            return
        if isinstance(final, Complete):
            self._rt.events.emit(
                "run:complete",
                run_id=self.run_id,
                job_name=self.job_name,
                output=conclusion.output,
                duration=self._rt.clock.monotonic() - self._started,
            )
        elif isinstance(final, Fail):
            self._rt.events.emit(
                "run:fail",
                run_id=self.run_id,
                job_name=self.job_name,
                error=final.error,
                failed_step_name=final.step_name,
            )
