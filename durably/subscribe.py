"""Following one run from a `Durably`: `subscribe` and the waits of `trigger_and_wait`.

Thin wrappers that take their dependencies from the facade; the work is in `_follow`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ._follow import AsyncFollow, Follow, Source, follow
from .records import Run

if TYPE_CHECKING:
    from .app import Durably


def source(durably: Durably) -> Source:
    """What following a run of `durably` needs: its events, its runs, its clock."""
    return Source(
        on=durably.on,
        make=durably._events.make,
        read_run=durably.get_run,
        poll=durably.polling_interval,
        clock=durably._clock,
    )


class RunSubscription(Follow):
    """Iterator over one run's events; ends after its terminal event. `close()` unsubscribes."""

    def __init__(self, durably: Durably, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(follow(source(durably), run_id))


class AsyncRunSubscription(AsyncFollow):
    """The async iterator form of `RunSubscription`; create it inside a running loop."""

    def __init__(self, durably: Durably, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(follow(source(durably), run_id))


def wait_for(durably: Durably, run_id: str, timeout: float | None) -> Run:
    """Block until the run is terminal; WaitTimeoutError after `timeout` seconds."""
    with Follow(follow(source(durably), run_id, quiet=True, timeout=timeout)) as waiting:
        next(waiting, None)  # quiet: it yields nothing and ends with the terminal run
    assert waiting.result is not None
    return waiting.result


async def wait_for_async(durably: Durably, run_id: str, timeout: float | None) -> Run:
    """`wait_for` without blocking the event loop."""
    core = follow(source(durably), run_id, quiet=True, timeout=timeout)
    async with contextlib.aclosing(AsyncFollow(core)) as waiting:
        await anext(waiting, None)
    assert waiting.result is not None
    return waiting.result
