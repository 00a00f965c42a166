"""Following one run: `subscribe` (events as they happen) and waiting for its end.

Events come from this process's emitter. A run executed by another process emits no
events here, so both also poll the database every `polling_interval` and synthesise the
final event when the run turned terminal elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import RunNotFoundError, WaitTimeoutError
from .events import TERMINAL_RUN_EVENTS, BaseEvent
from .records import Run

if TYPE_CHECKING:
    from .app import Durably

_END = object()


def final_event(durably: Durably, run: Run) -> BaseEvent:
    """The event that describes a terminal run's final state (not broadcast)."""
    events = durably._events
    if run.status == "completed":
        duration = 0.0
        if run.started_at is not None and run.completed_at is not None:
            duration = (run.completed_at - run.started_at).total_seconds()
        return events.make(
            "run:complete",
            run_id=run.id,
            job_name=run.job_name,
            output=run.output,
            duration=duration,
        )
    if run.status == "failed":
        return events.make(
            "run:fail",
            run_id=run.id,
            job_name=run.job_name,
            error=run.error or "",
            failed_step_name=run.failed_step_name,
        )
    return events.make("run:cancel", run_id=run.id, job_name=run.job_name)


class RunSubscription(Iterator[BaseEvent]):
    """Iterator over one run's events; ends after its terminal event. `close()` unsubscribes."""

    def __init__(self, durably: Durably, run_id: str) -> None:
        self._d = durably
        self.run_id = run_id
        self._queue: queue.Queue[Any] = queue.Queue()
        self._finished = False
        self._unsubscribe: Callable[[], None] | None = durably.on("*", self._on_event)
        try:
            run = durably.get_run(run_id)
        except BaseException:
            self.close()
            raise
        if run is None:
            self.close()
            raise RunNotFoundError(run_id)
        if run.is_terminal:
            with self._queue.mutex:
                already = any(
                    isinstance(e, BaseEvent) and e.type in TERMINAL_RUN_EVENTS
                    for e in self._queue.queue
                )
            if not already:
                self._queue.put(final_event(durably, run))

    def _on_event(self, event: Any) -> None:
        if getattr(event, "run_id", None) == self.run_id:
            self._queue.put(event)

    def __iter__(self) -> RunSubscription:
        return self

    def __next__(self) -> BaseEvent:
        if self._finished:
            raise StopIteration
        while True:
            try:
                event = self._queue.get(timeout=self._d.polling_interval)
            except queue.Empty:
                run = self._d.get_run(self.run_id)
                if run is None:
                    self.close()
                    raise StopIteration from None
                if run.is_terminal and self._queue.empty():
                    event = final_event(self._d, run)
                else:
                    continue
            if event.type in TERMINAL_RUN_EVENTS:
                self.close()
            return event  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop listening; the iterator ends."""
        self._finished = True
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def __enter__(self) -> RunSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class AsyncRunSubscription(AsyncIterator[BaseEvent]):
    """The async iterator form of `RunSubscription`; create it inside a running loop."""

    def __init__(self, durably: Durably, run_id: str) -> None:
        self._d = durably
        self.run_id = run_id
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._finished = False
        self._started = False
        self._unsubscribe: Callable[[], None] | None = durably.on("*", self._on_event)

    def _on_event(self, event: Any) -> None:
        if getattr(event, "run_id", None) == self.run_id:
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
            except RuntimeError:  # loop closed
                pass

    def __aiter__(self) -> AsyncRunSubscription:
        return self

    async def _start(self) -> None:
        self._started = True
        run = await asyncio.to_thread(self._d.get_run, self.run_id)
        if run is None:
            await self.aclose()
            raise RunNotFoundError(self.run_id)
        if run.is_terminal:
            await asyncio.sleep(0)  # let already-scheduled deliveries land
            already = any(
                isinstance(e, BaseEvent) and e.type in TERMINAL_RUN_EVENTS
                for e in list(self._queue._queue)  # type: ignore[attr-defined]
            )
            if not already:
                self._queue.put_nowait(final_event(self._d, run))

    async def __anext__(self) -> BaseEvent:
        if self._finished:
            raise StopAsyncIteration
        if not self._started:
            await self._start()
        while True:
            try:
                event = await asyncio.wait_for(self._queue.get(), self._d.polling_interval)
            except asyncio.TimeoutError:
                run = await asyncio.to_thread(self._d.get_run, self.run_id)
                if run is None:
                    await self.aclose()
                    raise StopAsyncIteration from None
                if run.is_terminal and self._queue.empty():
                    event = final_event(self._d, run)
                else:
                    continue
            if event.type in TERMINAL_RUN_EVENTS:
                await self.aclose()
            return event  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Stop listening; the iterator ends."""
        self._finished = True
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()


class _Deadline:
    """The state of waiting for a run's end, shared by the sync and async waits."""

    def __init__(self, durably: Durably, run_id: str, timeout: float | None) -> None:
        self.run_id = run_id
        self.timeout = timeout
        self._clock = durably._clock
        self._poll = durably.polling_interval
        self._deadline = None if timeout is None else self._clock.monotonic() + timeout

    def check(self, run: Run | None) -> float | None:
        """None when `run` is terminal; else how long to wait for an event before polling."""
        if run is None:
            raise RunNotFoundError(self.run_id)
        if run.is_terminal:
            return None
        if self._deadline is None:
            return self._poll
        remaining = self._deadline - self._clock.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(self.run_id, self.timeout or 0.0)
        return min(self._poll, remaining)


def _on_terminal(durably: Durably, run_id: str, wake: Callable[[], None]) -> Callable[[], None]:
    """Call `wake` when this run ends in this process; returns the unsubscribe function."""

    def on_end(event: Any) -> None:
        if event.run_id == run_id:
            wake()

    unsubscribers = [durably.on(t, on_end) for t in sorted(TERMINAL_RUN_EVENTS)]

    def unsubscribe() -> None:
        for unsubscribe_one in unsubscribers:
            unsubscribe_one()

    return unsubscribe


def wait_for(durably: Durably, run_id: str, timeout: float | None) -> Run:
    """Block until the run is terminal; WaitTimeoutError after `timeout` seconds."""
    done = threading.Event()
    state = _Deadline(durably, run_id, timeout)
    unsubscribe = _on_terminal(durably, run_id, done.set)
    try:
        while True:
            run = durably.get_run(run_id)
            wait = state.check(run)
            if wait is None:
                assert run is not None
                return run
            done.wait(wait)
            done.clear()
    finally:
        unsubscribe()


async def wait_for_async(durably: Durably, run_id: str, timeout: float | None) -> Run:
    """`wait_for` without blocking the event loop."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    state = _Deadline(durably, run_id, timeout)

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(done.set)

    unsubscribe = _on_terminal(durably, run_id, wake)
    try:
        while True:
            run = await asyncio.to_thread(durably.get_run, run_id)
            wait = state.check(run)
            if wait is None:
                assert run is not None
                return run
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), wait)
            done.clear()
    finally:
        unsubscribe()
