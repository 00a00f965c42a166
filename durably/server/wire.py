"""The JSON wire format: camelCase keys, ISO-8601 UTC times with `Z`, durations in ms.

The shapes are those of @coji/durably 0.6's HTTP handler, so its clients work unchanged.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from pydantic_core import to_jsonable_python

from durably import BaseEvent, LogEntry, Progress, Run, StepRecord
from durably._records import finite_json

#: `/runs/subscribe` forwards these as `{type, runId, jobName}` (+ `progress`).
RUN_SUMMARY_TYPES = frozenset(
    {
        "run:trigger",
        "run:start",
        "run:complete",
        "run:fail",
        "run:cancel",
        "run:retry",
        "run:progress",
    }
)
#: `/runs/subscribe` forwards these as `{type, runId, jobName, stepName, stepIndex}` (+ `error`).
STEP_SUMMARY_TYPES = frozenset({"step:start", "step:complete", "step:fail"})


def iso(value: datetime | None) -> str | None:
    """An aware datetime as ISO-8601 UTC with a `Z`, microseconds kept (JS `Date` parses it)."""
    if value is None:
        return None
    text = value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return text[: -len("+00:00")] + "Z"


def camel(name: str) -> str:
    """`failed_step_name` -> `failedStepName`."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def milliseconds(seconds: float) -> int:
    """Python durations are seconds; the original's are whole milliseconds (`Date.now()` deltas)."""
    return round(seconds * 1000)


def progress_json(progress: Progress | None) -> dict[str, Any] | None:
    """`{current}` plus `total` and `message` only when set, like the original."""
    if progress is None:
        return None
    data: dict[str, Any] = {"current": progress.current}
    if progress.total is not None:
        data["total"] = progress.total
    if progress.message is not None:
        data["message"] = progress.message
    return data


def run_json(run: Run, step_count: int) -> dict[str, Any]:
    """A Run as the original's `Run`, plus `startedAt` and `completedAt`."""
    return {
        "id": run.id,
        "jobName": run.job_name,
        "payload": run.payload,
        "status": run.status,
        "idempotencyKey": run.idempotency_key,
        "concurrencyKey": run.concurrency_key,
        "currentStepIndex": run.current_step_index,
        "stepCount": step_count,
        "progress": progress_json(run.progress),
        "output": run.output,
        "error": run.error,
        "heartbeatAt": iso(run.heartbeat_at),
        "createdAt": iso(run.created_at),
        "updatedAt": iso(run.updated_at),
        "startedAt": iso(run.started_at),
        "completedAt": iso(run.completed_at),
    }


def step_json(step: StepRecord) -> dict[str, Any]:
    return {
        "id": step.id,
        "runId": step.run_id,
        "name": step.name,
        "index": step.index,
        "status": step.status,
        "output": step.output,
        "error": step.error,
        "startedAt": iso(step.started_at),
        "completedAt": iso(step.completed_at),
    }


def log_json(entry: LogEntry) -> dict[str, Any]:
    """A persisted log line (an addition: the original's handler has no logs route)."""
    return {
        "id": entry.id,
        "runId": entry.run_id,
        "stepName": entry.step_name,
        "level": entry.level,
        "message": entry.message,
        "data": entry.data,
        "createdAt": iso(entry.created_at),
    }


def event_json(event: BaseEvent) -> dict[str, Any]:
    """Every field of an event in camelCase; `type`, `timestamp`, `sequence` first."""
    data: dict[str, Any] = {}
    for name, value in event.to_dict().items():
        if name == "duration" and isinstance(value, (int, float)):
            value = milliseconds(value)
        elif isinstance(value, datetime):
            value = iso(value)
        elif isinstance(value, Progress):
            value = progress_json(value)
        data[camel(name)] = value
    return data


def summary_json(event: BaseEvent) -> dict[str, Any] | None:
    """The reduced notification `/runs/subscribe` sends, or None for types it does not send."""
    fields = event.to_dict()
    if event.type in RUN_SUMMARY_TYPES:
        data = {"type": event.type, "runId": fields["run_id"], "jobName": fields["job_name"]}
        if event.type == "run:progress":
            data["progress"] = progress_json(fields["progress"])
        return data
    if event.type in STEP_SUMMARY_TYPES:
        data = {
            "type": event.type,
            "runId": fields["run_id"],
            "jobName": fields["job_name"],
            "stepName": fields["step_name"],
            "stepIndex": fields["step_index"],
        }
        if event.type == "step:fail":
            data["error"] = fields["error"]
        return data
    if event.type == "log:write":
        return {
            "type": event.type,
            "runId": fields["run_id"],
            "stepName": fields["step_name"],
            "level": fields["level"],
            "message": fields["message"],
            "data": fields["data"],
        }
    return None


def _jsonable(value: Any) -> Any:
    # log data and outputs may hold models, sets, dates...: what pydantic would dump
    return to_jsonable_python(value, fallback=repr)


def dumps(value: Any) -> str:
    """Compact JSON that any JSON parser accepts (no NaN), whatever the payload holds."""
    try:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_jsonable
        )
    except ValueError:
        return json.dumps(
            finite_json(_jsonable(value)),
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
