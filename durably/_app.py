"""`Durably` and `create_durably`: the facade that wires the parts; it holds no logic."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from ._clock import Clock, SystemClock
from ._dialect import Dialect, as_dialect, redact_url
from ._errors import DurablyError, MigrationError
from ._events import ErrorHandler, EventEmitter, Listener
from ._follow import AsyncFollow, Follow, Source, follow, wait, wait_async
from ._handle import JobHandle, JobsNamespace
from ._jobs import JobDefinition
from ._lease import LeaseKeeper
from ._migrate import AlembicMigrator
from ._records import LogEntry, Run, RunStatus, StepRecord
from ._runs import RunOperations, check_count
from ._runtime import DEFAULT_MAX_PAYLOAD_BYTES, JobRegistry, Runtime, Settings
from ._store import Store
from ._text import check_name
from ._worker import Worker

logger = logging.getLogger("durably")


class Durably:
    """One durably instance: a database, the registered jobs and a worker.

    Use `create_durably(url)` to build one. It is also a context manager: leaving the
    block stops the worker and closes the database.
    """

    def __init__(
        self,
        dialect: Dialect,
        *,
        polling_interval: float = 1.0,
        heartbeat_interval: float = 5.0,
        stale_threshold: float = 30.0,
        max_concurrent_runs: int = 1,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Clock | None = None,
    ) -> None:
        settings = Settings.validated(
            polling_interval=polling_interval,
            heartbeat_interval=heartbeat_interval,
            stale_threshold=stale_threshold,
            max_concurrent_runs=max_concurrent_runs,
            max_payload_bytes=max_payload_bytes,
        )
        self.polling_interval = settings.polling_interval
        self.heartbeat_interval = settings.heartbeat_interval
        self.stale_threshold = settings.stale_threshold
        self.max_concurrent_runs = settings.max_concurrent_runs
        self.max_payload_bytes = settings.max_payload_bytes
        self.dialect = dialect
        self._clock: Clock = clock or SystemClock()
        self._events = EventEmitter(self._clock)
        self._runtime = Runtime(
            store=Store(dialect, self._clock),
            events=self._events,
            clock=self._clock,
            settings=settings,
            jobs=JobRegistry(),
        )
        self._keeper = LeaseKeeper(self._runtime)
        self._worker = Worker(self._runtime, self._keeper)
        self._runs = RunOperations(self._runtime, self._keeper, self._worker.wake)
        self._source = Source(
            on=self._events.on,
            make=self._events.make,
            read_run=self._runs.get,
            poll=settings.polling_interval,
            clock=self._clock,
        )
        self._handles: dict[str, JobHandle[Any, Any]] = {}
        self._register_lock = threading.Lock()
        self.jobs = JobsNamespace()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Durably {redact_url(getattr(self.dialect, 'url', '?'))}>"

    def _wait_for(self, run_id: str, timeout: float | None) -> Run:
        return wait(self._source, run_id, timeout)

    async def _wait_for_async(self, run_id: str, timeout: float | None) -> Run:
        return await wait_async(self._source, run_id, timeout)

    @property
    def persist_logs(self) -> bool:
        """Whether `step.log` lines are stored (`durably.use(with_log_persistence())`)."""
        return self._runtime.persist_logs

    @persist_logs.setter
    def persist_logs(self, value: bool) -> None:
        self._runtime.persist_logs = bool(value)

    # -- setup -------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade durably's tables (alembic, idempotent, safe across processes)."""
        try:
            self.dialect.migrate(AlembicMigrator())
        except MigrationError:
            raise
        except Exception as exc:
            raise MigrationError(
                f"migrating {redact_url(getattr(self.dialect, 'url', '?'))} failed: {exc}"
            ) from exc

    def register(
        self, jobs: Mapping[str, JobDefinition[Any, Any]]
    ) -> dict[str, JobHandle[Any, Any]]:
        """Register job definitions; returns their handles under the same keys."""
        if not isinstance(jobs, Mapping):
            raise TypeError("register() takes a mapping of {key: JobDefinition}")
        result: dict[str, JobHandle[Any, Any]] = {}
        with self._register_lock:
            for key, definition in jobs.items():
                if not isinstance(definition, JobDefinition):
                    raise TypeError(
                        f"register(): {key!r} is {definition!r}, not a JobDefinition "
                        "(make one with define_job)"
                    )
                try:
                    self._runtime.jobs.add(definition)
                except ValueError:
                    raise DurablyError(
                        f"a different job is already registered under the name "
                        f"{definition.name!r}; job names must be unique per instance"
                    ) from None
                handle = self._handles.get(definition.name)
                if handle is None:
                    handle = JobHandle(self._runs, definition, self._wait_for, self._wait_for_async)
                    self._handles[definition.name] = handle
                self.jobs._set(key, handle)
                result[key] = handle
        self._worker.wake()
        return result

    def get_job(self, name: str) -> JobHandle[Any, Any] | None:
        """The handle registered under a job name, or None (also for a name that is no string)."""
        return self._handles.get(name) if isinstance(name, str) else None

    def on(self, event_type: str, handler: Listener) -> Callable[[], None]:
        """Subscribe to one event type or "*"; returns an unsubscribe function."""
        return self._events.on(event_type, handler)

    def on_error(self, handler: ErrorHandler) -> Callable[[], None]:
        """`handler(exc, event)` is called when a listener raises."""
        return self._events.on_error(handler)

    def use(self, plugin: Any) -> Any:
        """Install a plugin: any object with `install(durably)`."""
        install = getattr(plugin, "install", None)
        if not callable(install):
            raise TypeError(f"{plugin!r} is not a durably plugin: it has no install(durably)")
        install(self)
        return plugin

    # -- the worker --------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker in the background; returns at once. A second call is a no-op."""
        self._check_open()
        self._worker.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming and wait for runs in flight.

        With a timeout, a run still in flight when it expires is released back to
        pending at its next step boundary; stop returns once that happened.
        """
        self._worker.stop(timeout)

    def process_one(self) -> bool:
        """Claim and execute at most one run in the calling thread; True if one ran."""
        self._check_open()
        with self._runtime.store.db.errors():
            lease = self._keeper.claim()
        if lease is None:
            return False
        self._worker.execute(lease)
        return True

    def process_until_idle(self, max_runs: int | None = None) -> int:
        """Run `process_one` until nothing is claimable (or `max_runs` ran)."""
        check_count("max_runs", max_runs)
        count = 0
        lease = None
        while max_runs is None or count < max_runs:
            self._check_open()
            if lease is None:
                with self._runtime.store.db.errors():
                    lease = self._keeper.claim()
            if lease is None:
                break
            count += 1
            # each run's final write claims the next one, unless this was the last wanted
            lease = self._worker.execute(lease, chain=max_runs is None or count < max_runs)
        return count

    async def process_one_async(self) -> bool:
        """`process_one` on the running loop: async jobs run here, sync jobs in a thread."""
        self._check_open()
        with self._runtime.store.db.errors():
            lease = await asyncio.to_thread(self._keeper.claim)
        if lease is None:
            return False
        await self._worker.execute_async(lease)
        return True

    async def process_until_idle_async(self, max_runs: int | None = None) -> int:
        check_count("max_runs", max_runs)
        count = 0
        while (max_runs is None or count < max_runs) and await self.process_one_async():
            count += 1
        return count

    # -- run state ---------------------------------------------------------------------

    def retry(self, run_id: str) -> None:
        """failed/cancelled -> pending; completed steps are kept and skipped on the rerun."""
        self._runs.retry(run_id)

    def cancel(self, run_id: str) -> None:
        """pending/running -> cancelled; a running run stops at its next step boundary."""
        self._runs.cancel(run_id)

    def delete_run(self, run_id: str) -> None:
        """Delete a terminal run with its steps and logs; frees its idempotency key."""
        self._runs.delete(run_id)

    def get_run(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def get_runs(
        self,
        *,
        job_name: str | Sequence[str] | None = None,
        status: RunStatus | Sequence[RunStatus] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Run]:
        """Runs newest first (created_at, then id, descending)."""
        return self._runs.query(job_name=job_name, status=status, limit=limit, offset=offset)

    def get_steps(self, run_id: str) -> list[StepRecord]:
        """The persisted steps of a run, in index order."""
        return self._runs.steps(run_id)

    def count_steps(self, run_id: str) -> int:
        """How many steps of a run are persisted (the HTTP API's `stepCount`)."""
        return self._runs.count_steps(run_id)

    def get_logs(self, run_id: str) -> list[LogEntry]:
        """The persisted logs of a run (empty unless log persistence is on)."""
        return self._runs.logs(run_id)

    def subscribe(self, run_id: str) -> Follow:
        """The events of one run as they happen; ends after its terminal event.

        Closing the iterator (or dropping it) removes its listener.
        """
        return Follow(follow(self._source, check_name("run id", run_id)))

    def subscribe_async(self, run_id: str) -> AsyncFollow:
        """The async iterator form of `subscribe` (call it inside a running loop)."""
        return AsyncFollow(follow(self._source, check_name("run id", run_id)))

    # -- async twins -------------------------------------------------------------------

    async def migrate_async(self) -> None:
        await asyncio.to_thread(self.migrate)

    async def stop_async(self, timeout: float | None = None) -> None:
        await asyncio.to_thread(self.stop, timeout)

    async def retry_async(self, run_id: str) -> None:
        await asyncio.to_thread(self.retry, run_id)

    async def cancel_async(self, run_id: str) -> None:
        await asyncio.to_thread(self.cancel, run_id)

    async def delete_run_async(self, run_id: str) -> None:
        await asyncio.to_thread(self.delete_run, run_id)

    async def get_run_async(self, run_id: str) -> Run | None:
        return await asyncio.to_thread(self.get_run, run_id)

    async def get_runs_async(
        self,
        *,
        job_name: str | Sequence[str] | None = None,
        status: RunStatus | Sequence[RunStatus] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Run]:
        return await asyncio.to_thread(
            self.get_runs, job_name=job_name, status=status, limit=limit, offset=offset
        )

    async def get_steps_async(self, run_id: str) -> list[StepRecord]:
        return await asyncio.to_thread(self.get_steps, run_id)

    async def count_steps_async(self, run_id: str) -> int:
        return await asyncio.to_thread(self.count_steps, run_id)

    async def get_logs_async(self, run_id: str) -> list[LogEntry]:
        return await asyncio.to_thread(self.get_logs, run_id)

    async def close_async(self) -> None:
        await asyncio.to_thread(self.close)

    # -- lifetime ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DurablyError("this Durably instance is closed")

    def close(self) -> None:
        """Stop the worker (waiting for runs in flight) and close the database."""
        if self._closed:
            return
        self._worker.stop()
        self._keeper.close()
        self._closed = True
        self.dialect.close()

    def __enter__(self) -> Durably:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Durably:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close_async()


def create_durably(
    database: str | Dialect = "sqlite:///durably.db",
    *,
    polling_interval: float = 1.0,
    heartbeat_interval: float = 5.0,
    stale_threshold: float = 30.0,
    max_concurrent_runs: int = 1,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    clock: Clock | None = None,
) -> Durably:
    """Create a Durably instance on a database URL (or a ready Dialect instance).

    `max_payload_bytes` bounds every JSON value stored (a trigger's input, a step's
    result, a job's output) in UTF-8 bytes, so that no backend is asked for more than it
    takes in one statement.
    """
    return Durably(
        as_dialect(database),
        polling_interval=polling_interval,
        heartbeat_interval=heartbeat_interval,
        stale_threshold=stale_threshold,
        max_concurrent_runs=max_concurrent_runs,
        max_payload_bytes=max_payload_bytes,
        clock=clock,
    )


def follow_source(durably: Durably) -> Source:
    """What following the runs of `durably` needs (for the HTTP feeds of `durably.server`)."""
    return durably._source
