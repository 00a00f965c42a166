"""Immutable records returned by the public API."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from ._events import Progress

RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
RUN_STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed", "cancelled")
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

T = TypeVar("T")


@dataclass(frozen=True)
class Run:
    """A run of a job as stored in the database."""

    id: str
    job_name: str
    status: RunStatus
    payload: Any
    output: Any
    error: str | None
    progress: Progress | None
    idempotency_key: str | None
    concurrency_key: str | None
    current_step_index: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    heartbeat_at: datetime | None = None
    failed_step_name: str | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the run is completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class StepRecord:
    """A persisted step of a run."""

    id: str
    run_id: str
    name: str
    index: int
    status: Literal["completed", "failed"]
    output: Any
    error: str | None
    started_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class LogEntry:
    """A persisted log line (written only with `with_log_persistence`)."""

    id: str
    run_id: str
    step_name: str | None
    level: str
    message: str
    data: Any
    created_at: datetime


@dataclass(frozen=True)
class TriggerResult(Generic[T]):
    """The outcome of `trigger_and_wait`: the run id and its validated output."""

    id: str
    output: T


@dataclass(frozen=True)
class BatchItem:
    """One item of `batch_trigger` with its own keys."""

    payload: Any
    idempotency_key: str | None = None
    concurrency_key: str | None = None


def finite_json(value: Any) -> Any:
    """A JSON value with NaN and infinities replaced by None, as `JSON.stringify` writes
    them: JSON has no such numbers, and the CLI and the HTTP API print stored values."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
