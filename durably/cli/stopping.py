"""How `durably worker` and `durably serve` stop: once, twice, or at once.

SIGTERM or Ctrl-C (SIGINT):
1. the first stops claiming and gives the runs in flight `--grace` seconds to finish, then
   releases the ones still running back to pending at their next step boundary;
2. the second releases them at once, without waiting out the grace: each goes back to
   pending as soon as the step it is in has ended (a step is never cut off midway);
3. the third exits on the spot: a run still inside a step stays `running` until its
   heartbeat is stale (`--stale-threshold`) and another worker takes it over.

The process then says which runs it released, so that nobody wonders where they went.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from .._app import Durably
from .._events import RunCancelEvent, RunCompleteEvent, RunFailEvent, RunStartEvent
from .args import plural

EXIT_AT_ONCE = 130
RELEASING = (
    "releasing the runs in flight: each goes back to pending when its current step ends "
    "(a third Ctrl-C exits at once)"
)


class StopSignals:
    """Counts SIGTERM/SIGINT: the first asks for a graceful stop, the second for releasing
    the runs in flight now, the third exits the process at once."""

    def __init__(self, on_signal: Callable[[], None] = lambda: None) -> None:
        self.requested = threading.Event()
        self.forced = threading.Event()
        self._on_signal = on_signal  # called on each of the first two
        self._count = 0
        # True while the main thread waits in `Durably.stop`: the second signal then
        # interrupts that wait (KeyboardInterrupt), so that the release starts at once
        self._armed = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._count += 1
        if self._count == 1:
            self.requested.set()
            self._on_signal()
        elif self._count == 2:
            self.forced.set()
            self._on_signal()
            if self._armed:
                raise KeyboardInterrupt
        else:
            # print() may be in the middle of a line on this very thread: write raw bytes
            os.write(
                sys.stderr.fileno(),
                b"exiting now: a run still inside a step stays running until its heartbeat "
                b"is stale (--stale-threshold); then another worker resumes it\n",
            )
            os._exit(EXIT_AT_ONCE)

    def stop(self, durably: Durably, grace: float, say: Callable[[str], None]) -> None:
        """Stop `durably`'s worker: within `grace` seconds, or at once after a second signal."""
        releasing = self.forced.is_set()
        if releasing:
            say(RELEASING)
        else:
            say(
                f"stopping: waiting up to {grace:g} s for runs in flight "
                "(a second Ctrl-C or SIGTERM releases them now)"
            )
        while True:
            try:
                self._armed = True
                if not releasing and self.forced.is_set():
                    raise KeyboardInterrupt  # the second signal came before the wait began
                durably.stop(timeout=0 if releasing else grace)
                self._armed = False
                return
            except KeyboardInterrupt:  # the second signal, during the graceful wait
                self._armed = False
                if not releasing:
                    releasing = True
                    say(RELEASING)


class InFlight:
    """The runs this process started and has not seen end: after the stop, those that are
    pending again are the ones it released."""

    def __init__(self, durably: Durably) -> None:
        self._durably = durably
        self._lock = threading.Lock()
        self._runs: dict[str, None] = {}  # insertion order: the order they started in

        def started(event: RunStartEvent) -> None:
            with self._lock:
                self._runs[event.run_id] = None

        def ended(event: RunCompleteEvent | RunFailEvent | RunCancelEvent) -> None:
            with self._lock:
                self._runs.pop(event.run_id, None)

        durably.on("run:start", started)
        for ending in ("run:complete", "run:fail", "run:cancel"):
            durably.on(ending, ended)

    def released(self) -> list[str]:
        """The ids of the runs started here that are pending now."""
        with self._lock:
            candidates = list(self._runs)
        released = []
        for run_id in candidates:
            run = self._durably.get_run(run_id)
            if run is not None and run.status == "pending":
                released.append(run_id)
        return released


def stopped_line(released: list[str]) -> str:
    """The last line of a stopped worker: `stopped`, and which runs went back to pending."""
    if not released:
        return "stopped"
    return (
        f"stopped; released {plural(len(released), 'run')} back to pending "
        f"(another worker resumes {'it' if len(released) == 1 else 'them'}): " + ", ".join(released)
    )
