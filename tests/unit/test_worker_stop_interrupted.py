"""`stop()` interrupted by a signal (Ctrl-C in a program that stops its worker) can be
called again, and the second call still releases the run in flight.

On Python 3.11, an exception raised by a signal handler inside `Thread.join` marks the
thread being joined as stopped while it still runs (the bpo-45274 handling in
`_wait_for_tstate_lock`): a worker that waited with `join` then lost track of its slots,
and the next `stop(timeout=0)` returned at once, leaving the run `running`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from durably import StepContext, create_durably, define_job


class Interrupted(Exception):
    """What the test's signal handler raises, as Ctrl-C raises KeyboardInterrupt."""


GATE = {"entered": threading.Event(), "open": threading.Event()}


def _wait_at_gate() -> str:
    GATE["entered"].set()
    if not GATE["open"].wait(30):
        raise AssertionError("the test never opened the gate")
    return "through"


@define_job(name="gated")
def gated(step: StepContext, payload: Any) -> str:
    step.run("gate", _wait_at_gate)
    step.run("after", lambda: "after")
    return "done"


@pytest.fixture
def interrupt_soon() -> Iterator[None]:
    """SIGALRM in 0.2 s; its handler raises `Interrupted` in the main thread."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_stop_interrupted_by_a_signal_then_called_again_releases_the_run(
    tmp_path: Path, interrupt_soon: None
) -> None:
    GATE["entered"].clear()
    GATE["open"].clear()
    durably = create_durably(
        f"sqlite:///{tmp_path / 'stop.db'}", polling_interval=0.05, heartbeat_interval=0.2
    )
    try:
        durably.migrate()
        durably.register({"gated": gated})
        run_id = durably.jobs.gated.trigger({}).id
        durably.start()
        assert GATE["entered"].wait(20)

        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            durably.stop(timeout=60)  # the run is held at the gate: this waits

        # the step is still in flight; the gate opens only after this stop has asked for
        # the release, so the run goes back to pending at the end of the step
        opener = threading.Timer(1.0, GATE["open"].set)
        opener.start()
        durably.stop(timeout=0)
        opener.join()
        run = durably.get_run(run_id)
        assert run is not None
        assert run.status == "pending"
        assert [s.name for s in durably.get_steps(run_id)] == ["gate"]
    finally:
        GATE["open"].set()
        durably.close()
