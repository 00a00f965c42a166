"""durably: step-oriented, resumable batch execution.

A job is a plain function; every `step.run(name, fn)` in it is persisted, so a run
killed by a crash, a deploy or Ctrl-C resumes from its last completed step.
"""

from ._step import AsyncStepContext, StepContext
from .app import Durably, create_durably
from .clock import Clock, SystemClock
from .dialect import (
    Connection,
    Cursor,
    Dialect,
    Migrator,
    Result,
    hookimpl,
    hookspec,
    installed_schemes,
    register_dialect_plugin,
    resolve_dialect,
    unregister_dialect_plugin,
)
from .errors import (
    ConfigurationError,
    DialectNotFoundError,
    DuplicateStepError,
    DurablyError,
    InputValidationError,
    InvalidRunStateError,
    MigrationError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    StepSerializationError,
    WaitTimeoutError,
)
from .events import (
    BaseEvent,
    DurablyEvent,
    EventType,
    LogWriteEvent,
    Progress,
    RunCancelEvent,
    RunCompleteEvent,
    RunFailEvent,
    RunProgressEvent,
    RunRetryEvent,
    RunStartEvent,
    RunTriggerEvent,
    StepCompleteEvent,
    StepFailEvent,
    StepStartEvent,
    WorkerErrorEvent,
)
from .handle import JobHandle, JobsNamespace
from .jobs import JobDefinition, define_job
from .records import BatchItem, LogEntry, Run, RunStatus, StepRecord, TriggerResult

__version__ = "0.1.0"

__all__ = [
    "AsyncStepContext",
    "BaseEvent",
    "BatchItem",
    "Clock",
    "ConfigurationError",
    "Connection",
    "Cursor",
    "Dialect",
    "DialectNotFoundError",
    "DuplicateStepError",
    "Durably",
    "DurablyError",
    "DurablyEvent",
    "EventType",
    "InputValidationError",
    "InvalidRunStateError",
    "JobDefinition",
    "JobHandle",
    "JobsNamespace",
    "LogEntry",
    "LogWriteEvent",
    "MigrationError",
    "Migrator",
    "Progress",
    "Result",
    "Run",
    "RunCancelEvent",
    "RunCancelledError",
    "RunCompleteEvent",
    "RunFailEvent",
    "RunFailedError",
    "RunNotFoundError",
    "RunProgressEvent",
    "RunRetryEvent",
    "RunStartEvent",
    "RunStatus",
    "RunTriggerEvent",
    "StepCompleteEvent",
    "StepContext",
    "StepFailEvent",
    "StepRecord",
    "StepSerializationError",
    "StepStartEvent",
    "SystemClock",
    "TriggerResult",
    "WaitTimeoutError",
    "WorkerErrorEvent",
    "__version__",
    "create_durably",
    "define_job",
    "hookimpl",
    "hookspec",
    "installed_schemes",
    "register_dialect_plugin",
    "resolve_dialect",
    "unregister_dialect_plugin",
]
