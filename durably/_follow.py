"""Following a run until it ends, once for `subscribe`, the waits and the HTTP feeds.

`follow` is a sans-IO generator that owns the listener and every rule; it asks its driver
for what blocks: a `Wait` for an event, a `Read` of the stored run (events come from this
process only, so a run is also polled, to notice an end reached elsewhere). `Follow`
blocks the thread, `AsyncFollow` awaits. The listener holds a queue and a wake-up, never
the driver, so a dropped driver is collected and its generator's `finally` unsubscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial

from ._clock import Clock
from ._errors import RunNotFoundError, WaitTimeoutError
from ._events import TERMINAL_RUN_EVENTS, BaseEvent
from ._records import Run

_TERMINAL = frozenset({"completed", "failed", "cancelled"})
# the run status each event leaves behind, to tell a duplicate final event from a new one
_STATUS_AFTER = {
    "run:start": "running",
    "run:retry": "pending",
    "run:complete": "completed",
    "run:fail": "failed",
    "run:cancel": "cancelled",
}


@dataclass(frozen=True)
class Source:
    """What a follow needs from an instance: explicit, so this module knows no `Durably`."""

    on: Callable[[str, Callable[[BaseEvent], None]], Callable[[], None]]
    make: Callable[..., BaseEvent]  # build an event without delivering it
    read_run: Callable[[str], Run | None]
    poll: float
    clock: Clock


class Listen:
    """Reply with the function that wakes the driver; the core subscribes on the reply."""


@dataclass(frozen=True)
class Read:
    """Reply with `call()`, the run as stored now, or throw its error in."""

    call: Callable[[], Run | None]


@dataclass(frozen=True)
class Wait:
    """Reply True once woken by an event, False after `seconds` (None: no limit)."""

    seconds: float | None


Request = BaseEvent | Listen | Read | Wait
Core = Generator[Request, Run | bool | Callable[[], None] | None, Run | None]


def final_event(make: Callable[..., BaseEvent], run: Run) -> BaseEvent:
    """The event that describes a terminal run's final state (not broadcast)."""
    if run.status == "completed":
        duration = 0.0
        if run.started_at is not None and run.completed_at is not None:
            duration = (run.completed_at - run.started_at).total_seconds()
        return make(
            "run:complete",
            run_id=run.id,
            job_name=run.job_name,
            output=run.output,
            duration=duration,
        )
    if run.status == "failed":
        return make(
            "run:fail",
            run_id=run.id,
            job_name=run.job_name,
            error=run.error or "",
            failed_step_name=run.failed_step_name,
        )
    return make("run:cancel", run_id=run.id, job_name=run.job_name)


def follow(
    source: Source,
    run_id: str | None,
    *,
    accept: Callable[[BaseEvent], bool] = lambda event: True,
    ends: frozenset[str] = TERMINAL_RUN_EVENTS,
    quiet: bool = False,
    timeout: float | None = None,
    on_read_error: Callable[[Exception], None] | None = None,
) -> Core:
    """Yield the events of `run_id` that `accept` takes (of every run when None, forever).

    A run found terminal that the consumer has not heard end gets its final event once;
    the follow ends after an event of `ends`, or when the run is deleted. `quiet` (the
    waits) yields no events and returns the terminal run instead; a wait that outlives
    `timeout` raises WaitTimeoutError. A failed poll raises, unless `on_read_error` takes
    it. `accept` and the driver's wake-up run in the emitting thread: keep them cheap.
    """
    wake = yield Listen()
    assert callable(wake)
    queue: deque[BaseEvent] = deque()

    def listener(event: BaseEvent) -> None:
        if (run_id is None or getattr(event, "run_id", None) == run_id) and accept(event):
            queue.append(event)
            wake()

    # a wait needs only the run's end: fewer types keep `wants` false on the hot path
    unsubscribers = [source.on(t, listener) for t in (TERMINAL_RUN_EVENTS if quiet else ["*"])]
    deadline = None if timeout is None else source.clock.monotonic() + timeout
    read = Read(partial(source.read_run, str(run_id)))
    try:
        run: Run | None = None
        if run_id is not None:
            reply = yield read
            run = reply if isinstance(reply, Run) else None
            if run is None:
                raise RunNotFoundError(run_id)
        told: str | None = None  # the run status the consumer last heard of
        while True:
            if run is not None and (quiet or not queue):  # events on their way tell it better
                if run.is_terminal:
                    if quiet:
                        return run
                    if run.status != told:
                        queue.append(final_event(source.make, run))
                elif told in _TERMINAL:  # retried elsewhere: its next end is news
                    told = run.status
            while queue and not quiet:
                event = queue.popleft()
                status = None if run_id is None else _STATUS_AFTER.get(event.type)
                if status in _TERMINAL and status == told:
                    continue  # already told from the database
                told = status or told
                yield event
                if run_id is not None and event.type in ends:
                    return None
            run = None
            seconds = None if run_id is None else source.poll
            if deadline is not None:
                remaining = deadline - source.clock.monotonic()
                if remaining <= 0:
                    raise WaitTimeoutError(str(run_id), timeout or 0.0)
                seconds = remaining if seconds is None else min(seconds, remaining)
            woke = yield Wait(seconds)
            if run_id is None or (woke and not quiet):
                continue
            if quiet:
                queue.clear()  # its events only say when to read
            try:
                reply = yield read
            except Exception as exc:
                if on_read_error is None:
                    raise
                on_read_error(exc)
                continue
            run = reply if isinstance(reply, Run) else None
            if run is None:
                if quiet:
                    raise RunNotFoundError(run_id)
                return None  # deleted
    finally:
        for unsubscribe in unsubscribers:
            unsubscribe()


class _Driver:
    """What both drivers share: the core, its pending request, its result, `close`."""

    def __init__(self, core: Core) -> None:
        self._core = core
        next(core)  # Listen
        self._request: Request | None = core.send(self._waker())  # listening from here
        self.result: Run | None = None  # what the core returned: the waits' terminal run

    def _waker(self) -> Callable[[], None]:
        """The wake-up the listener calls; it must not hold the driver (or it never dies)."""
        raise NotImplementedError

    def _reply(self, reply: Run | bool | None = None, error: Exception | None = None) -> None:
        """Answer the pending request; store the core's next one (None once it ended)."""
        self._request = None
        try:
            self._request = self._core.send(reply) if error is None else self._core.throw(error)
        except StopIteration as stop:
            self.result = stop.value

    def _take(self, end: type[Exception]) -> BaseEvent:
        """The pending event (`end` is raised once the core ended); the core goes on."""
        event = self._request
        if not isinstance(event, BaseEvent):
            raise end
        self._reply()
        return event

    def close(self) -> None:
        """Stop following: the listener is removed and iteration ends. Idempotent."""
        self._request = None
        self._core.close()


class Follow(_Driver, Iterator[BaseEvent]):
    """`follow` carried out by blocking the calling thread; the first read is done at once."""

    def __init__(self, core: Core) -> None:
        super().__init__(core)
        self._settle(block=False)  # an unknown run raises here, not at the first next()

    def _waker(self) -> Callable[[], None]:
        self._woken = threading.Event()
        return self._woken.set

    def _settle(self, block: bool) -> None:
        """Do the core's requests until it has an event or ended (or waits, unless `block`)."""
        while isinstance(request := self._request, Read) or (block and isinstance(request, Wait)):
            if isinstance(request, Wait):
                woke = self._woken.wait(request.seconds)
                self._woken.clear()  # before the core looks at its queue: no wake-up is lost
                self._reply(woke)
                continue
            try:
                run = request.call()
            except Exception as exc:
                self._reply(error=exc)
            else:
                self._reply(run)

    def __next__(self) -> BaseEvent:
        self._settle(block=True)
        return self._take(StopIteration)

    def __enter__(self) -> Follow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFollow(_Driver, AsyncIterator[BaseEvent]):
    """`follow` carried out by awaiting (reads in a thread); create it inside a running loop."""

    def _waker(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        woken = self._woken = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(woken.set)

        return wake

    async def settle(self, block: bool = True) -> None:
        """`Follow._settle`, awaiting; `settle(block=False)` does the first read."""
        while isinstance(request := self._request, Read) or (block and isinstance(request, Wait)):
            if isinstance(request, Wait):
                try:
                    await asyncio.wait_for(self._woken.wait(), request.seconds)
                    woke = True
                except asyncio.TimeoutError:
                    woke = False
                self._woken.clear()
                self._reply(woke)
                continue
            try:
                run = await asyncio.to_thread(request.call)
            except Exception as exc:
                self._reply(error=exc)
            else:
                self._reply(run)

    async def __anext__(self) -> BaseEvent:
        await self.settle()
        return self._take(StopAsyncIteration)

    async def aclose(self) -> None:
        """`close`, for `contextlib.aclosing` and the async iterator protocol."""
        self.close()


def wait(source: Source, run_id: str, timeout: float | None) -> Run:
    """Block until the run is terminal; WaitTimeoutError after `timeout` seconds."""
    with Follow(follow(source, run_id, quiet=True, timeout=timeout)) as waiting:
        next(waiting, None)  # quiet: it yields nothing and ends with the terminal run
    assert waiting.result is not None
    return waiting.result


async def wait_async(source: Source, run_id: str, timeout: float | None) -> Run:
    """`wait` without blocking the event loop."""
    core = follow(source, run_id, quiet=True, timeout=timeout)
    async with contextlib.aclosing(AsyncFollow(core)) as waiting:
        await anext(waiting, None)
    assert waiting.result is not None
    return waiting.result
