"""The operations on runs that `Durably` and `JobHandle` offer: create, change, read.

Input is validated here, before anything is written: an id, a key or a page that no
backend can store or bind is a typed error for the caller, never a database error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._errors import ConfigurationError, InputValidationError
from ._lease import LeaseKeeper
from ._records import RUN_STATUSES, LogEntry, Run, RunStatus, StepRecord
from ._runtime import Runtime
from ._store import NewRun
from ._text import check_name


def _as_list(value: str | Sequence[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or isinstance(value, (bytes, bytearray)):
        raise InputValidationError(f"{what} must be a string or a list of strings, got {value!r}")
    values = list(value)
    for v in values:
        if not isinstance(v, str):
            raise InputValidationError(
                f"{what} must be a string or a list of strings, got {v!r} in {value!r}"
            )
    return values


def check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigurationError(f"{name} must be a non-negative integer or None, got {value!r}")


class RunOperations:
    """Creating, changing and reading runs of one instance."""

    def __init__(self, runtime: Runtime, keeper: LeaseKeeper, wake: Callable[[], None]) -> None:
        self._rt = runtime
        self._keeper = keeper
        self._wake = wake

    @property
    def max_payload_bytes(self) -> int:
        """The largest JSON value, in UTF-8 bytes, that the instance stores."""
        return self._rt.settings.max_payload_bytes

    def create(self, new_runs: Sequence[NewRun]) -> list[Run]:
        """Store pending runs (all or nothing), emit run:trigger for the new ones."""
        created = False
        with self._rt.announcements.announcing(new.id for new in new_runs):
            with self._rt.store.db.errors():
                results = self._rt.store.runs.create_runs(new_runs)
            for run, is_new in results:
                if is_new:
                    created = True
                    self._rt.events.emit(
                        "run:trigger", run_id=run.id, job_name=run.job_name, payload=run.payload
                    )
        if created:
            self._wake()
        return [run for run, _ in results]

    def retry(self, run_id: str) -> None:
        with self._rt.announcements.announcing([check_name("run id", run_id)]):
            with self._rt.store.db.errors():
                job_name = self._rt.store.runs.retry(run_id)
            self._rt.events.emit("run:retry", run_id=run_id, job_name=job_name)
        self._wake()

    def cancel(self, run_id: str) -> None:
        with self._rt.store.db.errors():
            job_name = self._rt.store.runs.cancel(check_name("run id", run_id))
        lease = self._keeper.active(run_id)
        if lease is not None:
            lease.cancel_requested = True
        self._rt.events.emit("run:cancel", run_id=run_id, job_name=job_name)

    def delete(self, run_id: str) -> None:
        with self._rt.store.db.errors():
            self._rt.store.runs.delete_run(check_name("run id", run_id))

    def get(self, run_id: str) -> Run | None:
        with self._rt.store.db.errors():
            return self._rt.store.reads.get_run(check_name("run id", run_id))

    def query(
        self,
        *,
        job_name: str | Sequence[str] | None = None,
        status: RunStatus | Sequence[RunStatus] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Run]:
        statuses = _as_list(status, "status")
        for s in statuses or ():
            if s not in RUN_STATUSES:
                raise ConfigurationError(
                    f"unknown status {s!r}; expected one of {', '.join(RUN_STATUSES)}"
                )
        job_names = _as_list(job_name, "job_name")
        for name in job_names or ():
            check_name("job name", name)
        check_count("limit", limit)
        check_count("offset", offset)
        with self._rt.store.db.errors():
            return self._rt.store.reads.get_runs(
                job_names=job_names, statuses=statuses, limit=limit, offset=offset
            )

    def steps(self, run_id: str) -> list[StepRecord]:
        with self._rt.store.db.errors():
            return self._rt.store.reads.get_steps(check_name("run id", run_id))

    def count_steps(self, run_id: str) -> int:
        with self._rt.store.db.errors():
            return self._rt.store.reads.count_steps(check_name("run id", run_id))

    def logs(self, run_id: str) -> list[LogEntry]:
        with self._rt.store.db.errors():
            return self._rt.store.reads.get_logs(check_name("run id", run_id))
