"""`JobHandle`: triggering a registered job and reading its runs."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from ._errors import (
    InputValidationError,
    PayloadTooLargeError,
    RunCancelledError,
    RunFailedError,
)
from ._ids import new_ulid
from ._jobs import JobDefinition
from ._records import BatchItem, Run, RunStatus, TriggerResult
from ._runs import RunOperations
from ._store import NewRun
from ._text import check_name, check_size

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741


Wait = Callable[[str, "float | None"], Run]
WaitAsync = Callable[[str, "float | None"], Awaitable[Run]]


def _check_key(kind: str, value: str | None) -> str | None:
    return None if value is None else check_name(kind, value)


class JobHandle(Generic[I, O]):
    """A job registered with a Durably instance."""

    def __init__(
        self,
        runs: RunOperations,
        definition: JobDefinition[I, O],
        wait: Wait,
        wait_async: WaitAsync,
    ) -> None:
        self._runs = runs
        self._wait = wait
        self._wait_async = wait_async
        self.definition = definition

    @property
    def name(self) -> str:
        """The job name."""
        return self.definition.name

    def __repr__(self) -> str:
        return f"JobHandle({self.name!r})"

    # -- triggering --------------------------------------------------------------------

    def _new_run(
        self, item: Any, idempotency_key: str | None, concurrency_key: str | None
    ) -> NewRun:
        value = self.definition.validate_input(item)
        payload_json = self.definition.input_json(value)
        check_size(f"the input of job {self.name!r}", payload_json, self._runs.max_payload_bytes)
        return NewRun(
            id=new_ulid(),
            job_name=self.name,
            payload_json=payload_json,
            idempotency_key=_check_key("idempotency_key", idempotency_key),
            concurrency_key=_check_key("concurrency_key", concurrency_key),
        )

    def trigger(
        self,
        input: I | Any,
        *,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> Run:
        """Validate `input` and store a pending run; an existing idempotency key returns its run."""
        new = self._new_run(input, idempotency_key, concurrency_key)
        return self._runs.create([new])[0]

    def batch_trigger(self, items: Iterable[I | BatchItem | Any]) -> list[Run]:
        """Validate every item, then write all runs in one transaction (all or nothing)."""
        new_runs: list[NewRun] = []
        for position, item in enumerate(items):
            try:
                if isinstance(item, BatchItem):
                    new_runs.append(
                        self._new_run(item.payload, item.idempotency_key, item.concurrency_key)
                    )
                else:
                    new_runs.append(self._new_run(item, None, None))
            except PayloadTooLargeError as exc:
                what = f"batch item {position}: the input of job {self.name!r}"
                raise PayloadTooLargeError(what, exc.size, exc.limit) from exc
            except InputValidationError as exc:
                raise InputValidationError(f"batch item {position}: {exc}", exc.errors) from exc
        if not new_runs:
            return []
        return self._runs.create(new_runs)

    def _result(self, run: Run) -> TriggerResult[O]:
        if run.status == "failed":
            raise RunFailedError(run.id, run.error)
        if run.status == "cancelled":
            raise RunCancelledError(run.id)
        return TriggerResult(id=run.id, output=self.definition.validate_output(run.output))

    def trigger_and_wait(
        self,
        input: I | Any,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> TriggerResult[O]:
        """Trigger and block until the run ends; raises if it fails, is cancelled or times out."""
        run = self.trigger(input, idempotency_key=idempotency_key, concurrency_key=concurrency_key)
        return self._result(self._wait(run.id, timeout))

    # -- reading -----------------------------------------------------------------------

    def _typed(self, run: Run) -> Run:
        if run.status == "completed" and self.definition.output_adapter is not None:
            return dataclasses.replace(run, output=self.definition.validate_output(run.output))
        return run

    def get_run(self, run_id: str) -> Run | None:
        """This job's run, with `output` parsed into the output type; None for other jobs."""
        run = self._runs.get(run_id)
        if run is None or run.job_name != self.name:
            return None
        return self._typed(run)

    def get_runs(
        self,
        *,
        status: RunStatus | Sequence[RunStatus] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Run]:
        """This job's runs, newest first."""
        runs = self._runs.query(job_name=self.name, status=status, limit=limit, offset=offset)
        return [self._typed(r) for r in runs]

    # -- async twins -------------------------------------------------------------------

    async def trigger_async(
        self,
        input: I | Any,
        *,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> Run:
        return await asyncio.to_thread(
            self.trigger, input, idempotency_key=idempotency_key, concurrency_key=concurrency_key
        )

    async def batch_trigger_async(self, items: Iterable[I | BatchItem | Any]) -> list[Run]:
        items = list(items)
        return await asyncio.to_thread(self.batch_trigger, items)

    async def trigger_and_wait_async(
        self,
        input: I | Any,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> TriggerResult[O]:
        run = await self.trigger_async(
            input, idempotency_key=idempotency_key, concurrency_key=concurrency_key
        )
        return self._result(await self._wait_async(run.id, timeout))

    async def get_run_async(self, run_id: str) -> Run | None:
        return await asyncio.to_thread(self.get_run, run_id)

    async def get_runs_async(
        self,
        *,
        status: RunStatus | Sequence[RunStatus] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Run]:
        return await asyncio.to_thread(self.get_runs, status=status, limit=limit, offset=offset)


class JobsNamespace:
    """The handles registered so far: `durably.jobs.sync_users`, `durably.jobs["sync_users"]`."""

    _handles: dict[str, JobHandle[Any, Any]]

    def __init__(self) -> None:
        object.__setattr__(self, "_handles", {})

    def _set(self, key: str, handle: JobHandle[Any, Any]) -> None:
        self._handles[key] = handle

    def __getattr__(self, key: str) -> JobHandle[Any, Any]:
        handles: dict[str, JobHandle[Any, Any]] = object.__getattribute__(self, "_handles")
        try:
            return handles[key]
        except KeyError:
            known = ", ".join(sorted(handles)) or "none"
            raise AttributeError(f"no job registered under {key!r} (registered: {known})") from None

    def __getitem__(self, key: str) -> JobHandle[Any, Any]:
        try:
            return self._handles[key]
        except KeyError:
            known = ", ".join(sorted(self._handles)) or "none"
            raise KeyError(f"no job registered under {key!r} (registered: {known})") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("register jobs with durably.register({...})")

    def __contains__(self, key: object) -> bool:
        return key in self._handles

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._handles))

    def __len__(self) -> int:
        return len(self._handles)

    def __dir__(self) -> list[str]:
        return sorted(self._handles)

    def __repr__(self) -> str:
        return f"JobsNamespace({sorted(self._handles)})"
