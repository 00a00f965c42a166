"""Event records and the emitter that delivers them to listeners."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ._clock import Clock

logger = logging.getLogger("durably.events")

EventType = Literal[
    "run:trigger",
    "run:start",
    "run:complete",
    "run:fail",
    "run:cancel",
    "run:retry",
    "run:progress",
    "step:start",
    "step:complete",
    "step:fail",
    "log:write",
    "worker:error",
]
EVENT_TYPES: frozenset[str] = frozenset(EventType.__args__)  # type: ignore[attr-defined]
TERMINAL_RUN_EVENTS: frozenset[str] = frozenset({"run:complete", "run:fail", "run:cancel"})


@dataclass(frozen=True)
class Progress:
    """Progress of a run as reported by `step.progress`."""

    current: float
    total: float | None = None
    message: str | None = None


@dataclass(frozen=True, kw_only=True)
class BaseEvent:
    """Fields every event has; `sequence` increases strictly per Durably instance."""

    type: str
    timestamp: datetime
    sequence: int

    def to_dict(self) -> dict[str, Any]:
        """The event's fields as a plain dict (Progress stays a Progress)."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


@dataclass(frozen=True, kw_only=True)
class RunTriggerEvent(BaseEvent):
    run_id: str
    job_name: str
    payload: Any


@dataclass(frozen=True, kw_only=True)
class RunStartEvent(BaseEvent):
    run_id: str
    job_name: str
    payload: Any


@dataclass(frozen=True, kw_only=True)
class RunCompleteEvent(BaseEvent):
    run_id: str
    job_name: str
    output: Any
    duration: float


@dataclass(frozen=True, kw_only=True)
class RunFailEvent(BaseEvent):
    run_id: str
    job_name: str
    error: str
    failed_step_name: str | None


@dataclass(frozen=True, kw_only=True)
class RunCancelEvent(BaseEvent):
    run_id: str
    job_name: str


@dataclass(frozen=True, kw_only=True)
class RunRetryEvent(BaseEvent):
    run_id: str
    job_name: str


@dataclass(frozen=True, kw_only=True)
class RunProgressEvent(BaseEvent):
    run_id: str
    job_name: str
    progress: Progress


@dataclass(frozen=True, kw_only=True)
class StepStartEvent(BaseEvent):
    run_id: str
    job_name: str
    step_name: str
    step_index: int


@dataclass(frozen=True, kw_only=True)
class StepCompleteEvent(BaseEvent):
    run_id: str
    job_name: str
    step_name: str
    step_index: int
    output: Any
    duration: float


@dataclass(frozen=True, kw_only=True)
class StepFailEvent(BaseEvent):
    run_id: str
    job_name: str
    step_name: str
    step_index: int
    error: str


@dataclass(frozen=True, kw_only=True)
class LogWriteEvent(BaseEvent):
    run_id: str
    step_name: str | None
    level: str
    message: str
    data: Any


@dataclass(frozen=True, kw_only=True)
class WorkerErrorEvent(BaseEvent):
    error: str
    context: str
    run_id: str | None = None


DurablyEvent = (
    RunTriggerEvent
    | RunStartEvent
    | RunCompleteEvent
    | RunFailEvent
    | RunCancelEvent
    | RunRetryEvent
    | RunProgressEvent
    | StepStartEvent
    | StepCompleteEvent
    | StepFailEvent
    | LogWriteEvent
    | WorkerErrorEvent
)

_EVENT_CLASSES: dict[str, type[BaseEvent]] = {
    "run:trigger": RunTriggerEvent,
    "run:start": RunStartEvent,
    "run:complete": RunCompleteEvent,
    "run:fail": RunFailEvent,
    "run:cancel": RunCancelEvent,
    "run:retry": RunRetryEvent,
    "run:progress": RunProgressEvent,
    "step:start": StepStartEvent,
    "step:complete": StepCompleteEvent,
    "step:fail": StepFailEvent,
    "log:write": LogWriteEvent,
    "worker:error": WorkerErrorEvent,
}

Listener = Callable[[Any], Any]
ErrorHandler = Callable[[BaseException, Any], Any]


@dataclass(eq=False)
class _Subscription:
    handler: Listener
    loop: asyncio.AbstractEventLoop | None = field(default=None)
    order: int = 0


class _BackgroundLoop:
    """An event loop in a daemon thread for coroutine listeners registered outside a loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="durably-listeners", daemon=True
                ).start()
                self._loop = loop
            return self._loop


_background_loop = _BackgroundLoop()


class EventEmitter:
    """Delivers events to listeners in registration order; a raising listener never escapes."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sequence = itertools.count(1)
        self._registrations = itertools.count()
        self._by_type: dict[str, list[_Subscription]] = {}
        # per event type, its own and the "*" listeners merged in registration order;
        # rebuilt on (un)subscribe so emit does one lookup
        self._dispatch: dict[str, list[_Subscription]] = {}
        self._error_handlers: list[ErrorHandler] = []

    def on(self, event_type: str, handler: Listener) -> Callable[[], None]:
        """Subscribe `handler` to `event_type` (or "*"); returns the unsubscribe function."""
        if event_type != "*" and event_type not in EVENT_TYPES:
            raise ValueError(
                f"unknown event type {event_type!r}; expected '*' or one of {sorted(EVENT_TYPES)}"
            )
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        sub = _Subscription(handler, loop)
        with self._lock:
            sub.order = next(self._registrations)
            # copy-on-write: emit iterates a snapshot without holding the lock
            self._by_type[event_type] = [*self._by_type.get(event_type, []), sub]
            self._rebuild()

        def unsubscribe() -> None:
            with self._lock:
                subs = self._by_type.get(event_type, [])
                self._by_type[event_type] = [s for s in subs if s is not sub]
                self._rebuild()

        return unsubscribe

    def _rebuild(self) -> None:
        wildcard = self._by_type.get("*", [])
        dispatch: dict[str, list[_Subscription]] = {}
        for event_type in EVENT_TYPES:
            merged = [*self._by_type.get(event_type, []), *wildcard]
            if merged:
                merged.sort(key=lambda s: s.order)
                dispatch[event_type] = merged
        self._dispatch = dispatch

    def listener_count(self) -> int:
        """How many listeners are subscribed (to any type)."""
        return sum(len(subs) for subs in self._by_type.values())

    def on_error(self, handler: ErrorHandler) -> Callable[[], None]:
        """Register `handler(exc, event)` for exceptions raised by listeners."""
        with self._lock:
            self._error_handlers = [*self._error_handlers, handler]

        def remove() -> None:
            with self._lock:
                self._error_handlers = [h for h in self._error_handlers if h is not handler]

        return remove

    def wants(self, event_type: str) -> bool:
        """Whether any listener would receive `event_type`: lets hot paths skip building events."""
        return event_type in self._dispatch

    def make(self, event_type: str, **fields: Any) -> BaseEvent:
        """Build an event with the next sequence number without delivering it."""
        return _EVENT_CLASSES[event_type](
            type=event_type,
            timestamp=self._clock.now(),
            sequence=next(self._sequence),
            **fields,
        )

    def emit(self, event_type: str, **fields: Any) -> BaseEvent | None:
        """Build the event (only if someone listens) and deliver it synchronously."""
        subs = self._dispatch.get(event_type)
        if subs is None:
            return None
        event = self.make(event_type, **fields)
        for sub in subs:
            self._deliver(sub, event)
        return event

    def _deliver(self, sub: _Subscription, event: BaseEvent) -> None:
        try:
            result = sub.handler(event)
        except Exception as exc:
            self._report(exc, event)
            return
        if inspect.iscoroutine(result):
            self._schedule(sub, result, event)

    def _schedule(
        self, sub: _Subscription, coro: Coroutine[Any, Any, Any], event: BaseEvent
    ) -> None:
        loop = sub.loop if sub.loop is not None and not sub.loop.is_closed() else None
        if loop is None:
            loop = _background_loop.get()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None

        def done(fut: Any) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:
                self._report(exc, event)

        if running is loop:
            task = loop.create_task(coro)
            task.add_done_callback(done)
        else:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
            future.add_done_callback(done)

    def _report(self, exc: BaseException, event: BaseEvent) -> None:
        handlers = self._error_handlers
        if not handlers:
            logger.error("event listener for %s raised", event.type, exc_info=exc)
            return
        for handler in handlers:
            try:
                handler(exc, event)
            except Exception:
                logger.exception("on_error handler raised while handling %s", event.type)
