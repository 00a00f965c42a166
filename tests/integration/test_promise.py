"""Regression tests of durably's promise, with threads and several workers on one database.

The promise: a step whose result was committed never runs again, and at most one worker
executes a run at any moment. Each "worker" here is its own `Durably` instance (its own
connections; on the servers its own sessions), so two workers share nothing but the
database, as two machines would. Step functions append to a `SideLog` that records which
worker executed which step and when, so a test can count executions whatever the
database says. Only the public API is used (plus the `clock=` option of create_durably).

Waiting for something that must NOT happen needs a bound: `_within(predicate, seconds)`
polls for it and returns False when the bound passes. The bound is never an assertion of
timing: it only gives the bug a generous chance to show (today's code shows it in a
fraction of it); every assertion is about what happened, read after the fact.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import wait_until
from pydantic import BaseModel

from durably import (
    ConfigurationError,
    Durably,
    DurablyError,
    InvalidRunStateError,
    RunNotFoundError,
    StepContext,
    create_durably,
    define_job,
)

HEARTBEAT = 0.2
STALE = 1.0
TERMINAL = ("completed", "failed", "cancelled")


class Payload(BaseModel):
    n: int = 0


@dataclass(frozen=True)
class Entry:
    kind: str  # "start" or "done"
    run_id: str
    step: str
    worker: str
    at: float


class SideLog:
    """Step executions, appended from inside step functions of every worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[Entry] = []

    def add(self, kind: str, run_id: str, step: str, worker: str) -> None:
        with self._lock:
            self.entries.append(Entry(kind, run_id, step, worker, time.monotonic()))

    def of(self, run_id: str, kind: str = "start") -> list[Entry]:
        with self._lock:
            return [e for e in self.entries if e.run_id == run_id and e.kind == kind]

    def starts(self, run_id: str) -> Counter[str]:
        return Counter(e.step for e in self.of(run_id))

    def started(self, run_id: str, step: str, worker: str | None = None) -> bool:
        return any(e.step == step and worker in (None, e.worker) for e in self.of(run_id))


def _within(predicate: Callable[[], Any], seconds: float) -> bool:
    """Poll `predicate` for at most `seconds`; True as soon as it holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


_current_worker = threading.local()


def _worker_name() -> str:
    return getattr(_current_worker, "name", threading.current_thread().name)


def _recorded(
    log: SideLog, step: StepContext, name: str, body: Callable[[], Any] | None = None
) -> Callable[[], Any]:
    """A step function that logs its start and end around `body`."""

    def fn() -> Any:
        log.add("start", step.run_id, name, _worker_name())
        result = body() if body is not None else None
        log.add("done", step.run_id, name, _worker_name())
        return {"step": name} if result is None else result

    return fn


def _worker(make_durably: Callable[..., Durably], name: str, **options: Any) -> Durably:
    """A Durably instance on the test's database whose worker threads carry `name`."""
    options.setdefault("heartbeat_interval", HEARTBEAT)
    options.setdefault("stale_threshold", STALE)
    d = make_durably(**options)
    d.on("run:start", lambda _e: setattr(_current_worker, "name", name))
    return d


def _thread(target: Callable[[], Any], name: str) -> threading.Thread:
    def body() -> None:
        _current_worker.name = name
        target()

    t = threading.Thread(target=body, name=name, daemon=True)
    t.start()
    return t


def _status(d: Durably, run_id: str) -> str | None:
    run = d.get_run(run_id)
    return None if run is None else run.status


# -- 2. a run claimed in the transaction that finished the previous one -------------------


@pytest.mark.parametrize("driver", ["start", "process_until_idle"])
def test_run_claimed_with_the_previous_completion_is_not_taken_over_while_a_listener_blocks(
    make_durably: Callable[..., Durably], driver: str
) -> None:
    """The next run, claimed together with run 1's completion, is held (heartbeated, or
    not claimed yet) while run 1's `run:complete` listener blocks: no second holder."""
    log = SideLog()

    def fn(step: StepContext, payload: Payload) -> None:
        step.run("s1", _recorded(log, step, "s1"))
        step.run("s2", _recorded(log, step, "s2"))

    job = define_job(name="chain", input=Payload, run=fn)
    a = _worker(make_durably, "A")
    b = _worker(make_durably, "B")
    a.register({"chain": job})
    b.register({"chain": job})
    r1 = a.jobs.chain.trigger({"n": 1})
    r2 = a.jobs.chain.trigger({"n": 2})
    entered = threading.Event()

    def on_complete(event: Any) -> None:
        if event.run_id == r1.id:
            entered.set()
            # longer than the stale threshold, cut short once B took run 2 (today's bug)
            _within(lambda: log.started(r2.id, "s1", "B"), 3 * STALE)

    a.on("run:complete", on_complete)
    if driver == "start":
        a.start()
    else:
        drain = _thread(a.process_until_idle, "A")
    assert entered.wait(20)
    b.start()
    wait_until(lambda: _status(a, r2.id) == "completed", timeout=30)
    if driver == "start":
        a.stop()
    else:
        drain.join(20)
    b.stop()

    assert log.starts(r2.id) == Counter({"s1": 1, "s2": 1}), log.of(r2.id)
    assert {e.worker for e in log.of(r2.id)} in ({"A"}, {"B"}), log.of(r2.id)
    assert [s.name for s in a.get_steps(r2.id)] == ["s1", "s2"]


def test_stop_with_timeout_while_a_listener_blocks_leaves_the_next_run_pending(
    make_durably: Callable[..., Durably],
) -> None:
    """stop(timeout) gives back what it holds at the next boundary: a run claimed along
    with run 1's completion is not executed to completion by the stopping worker."""
    log = SideLog()

    def fn(step: StepContext, payload: Payload) -> None:
        step.run("s1", _recorded(log, step, "s1"))
        step.run("s2", _recorded(log, step, "s2"))

    job = define_job(name="chain", input=Payload, run=fn)
    a = _worker(make_durably, "A")
    a.register({"chain": job})
    r1 = a.jobs.chain.trigger({"n": 1})
    r2 = a.jobs.chain.trigger({"n": 2})
    entered = threading.Event()
    stop_called = threading.Event()

    def on_complete(event: Any) -> None:
        if event.run_id == r1.id:
            entered.set()
            stop_called.wait(20)
            time.sleep(5 * 0.2)  # the listener outlasts stop's timeout (the scenario)

    a.on("run:complete", on_complete)
    a.start()
    assert entered.wait(20)
    stop_called.set()
    a.stop(timeout=0.2)

    assert _status(a, r1.id) == "completed"
    assert _status(a, r2.id) == "pending", a.get_run(r2.id)
    assert log.of(r2.id) == []
    assert a.get_steps(r2.id) == []


# -- 3. cancelling the awaiting task of process_one_async ------------------------------


def test_cancelled_process_one_async_keeps_heartbeating_its_sync_job_until_it_ends(
    make_durably: Callable[..., Durably],
) -> None:
    """Cancelling the task that awaits process_one_async cannot stop a sync job's thread;
    while that thread runs the run stays held, so no other worker takes it over."""
    log = SideLog()
    release = threading.Event()

    def fn(step: StepContext, payload: Payload) -> None:
        step.run("s1", _recorded(log, step, "s1", lambda: release.wait(30) and None))
        step.run("s2", _recorded(log, step, "s2"))

    job = define_job(name="long", input=Payload, run=fn)
    a = _worker(make_durably, "A")
    b = _worker(make_durably, "B")
    a.register({"long": job})
    b.register({"long": job})
    run = a.jobs.long.trigger({})
    cancelled = threading.Event()

    async def main() -> None:
        task = asyncio.create_task(a.process_one_async())
        while not log.started(run.id, "s1"):
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cancelled.set()

    # asyncio.run waits for the job's thread when it shuts its executor down: own thread
    loop_thread = _thread(lambda: asyncio.run(main()), "A")
    assert cancelled.wait(20)
    b.start()
    try:
        taken_over = _within(lambda: log.started(run.id, "s1", "B"), 3 * STALE)
    finally:
        release.set()
    wait_until(lambda: _status(a, run.id) == "completed", timeout=30)
    loop_thread.join(20)
    b.stop()

    assert not taken_over, f"B started s1 while A still executed it: {log.of(run.id)}"
    assert log.starts(run.id) == Counter({"s1": 1, "s2": 1}), log.of(run.id)
    assert [(s.name, s.status) for s in a.get_steps(run.id)] == [
        ("s1", "completed"),
        ("s2", "completed"),
    ]


# -- 4. two machines' clocks ----------------------------------------------------------


class ShiftedClock:
    """A wall clock off by `offset` seconds (a machine whose NTP is wrong); monotonic is true."""

    def __init__(self, offset: float) -> None:
        self.offset = timedelta(seconds=offset)

    def now(self) -> datetime:
        return datetime.now().astimezone() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.mark.backends("postgres", "mysql")
@pytest.mark.parametrize(
    ("offset_a", "offset_b"),
    [(0.0, 3 * STALE), (-3 * STALE, 0.0)],
    ids=["recoverer-clock-ahead", "owner-clock-stepped-back"],
)
def test_live_run_is_not_taken_over_when_the_workers_clocks_disagree(
    make_durably: Callable[..., Durably], offset_a: float, offset_b: float
) -> None:
    """Staleness is judged on one clock (the database's): a worker whose wall clock is
    ahead, or an owner whose clock stepped back, does not make a heartbeating run stale."""
    log = SideLog()
    release = threading.Event()

    def fn(step: StepContext, payload: Payload) -> None:
        step.run("s1", _recorded(log, step, "s1", lambda: release.wait(30) and None))
        step.run("s2", _recorded(log, step, "s2"))

    job = define_job(name="long", input=Payload, run=fn)
    a = _worker(make_durably, "A", clock=ShiftedClock(offset_a))
    b = _worker(make_durably, "B", clock=ShiftedClock(offset_b))
    a.register({"long": job})
    b.register({"long": job})
    run = a.jobs.long.trigger({})
    owner = _thread(a.process_one, "A")
    wait_until(lambda: log.started(run.id, "s1", "A"))
    b.start()
    try:
        taken_over = _within(lambda: log.started(run.id, "s1", "B"), 3 * STALE)
    finally:
        release.set()
    owner.join(20)
    wait_until(lambda: _status(a, run.id) in TERMINAL, timeout=30)
    b.stop()

    assert not taken_over, f"B started s1 while A still executed it: {log.of(run.id)}"
    assert log.starts(run.id) == Counter({"s1": 1, "s2": 1}), log.of(run.id)
    assert {e.worker for e in log.of(run.id)} == {"A"}
    assert _status(a, run.id) == "completed"


# -- 5. settings that make healthy runs look stale ------------------------------------


def test_heartbeat_interval_too_close_to_stale_threshold_is_refused(backend_url: str) -> None:
    """A heartbeat every 0.9 s against a 1.0 s threshold leaves no room for one late beat."""
    with pytest.raises(ConfigurationError) as info:
        create_durably(backend_url, heartbeat_interval=0.9, stale_threshold=1.0)
    assert isinstance(info.value, DurablyError)
    assert isinstance(info.value, ValueError)


def test_healthy_long_step_at_the_accepted_boundary_is_never_taken_over(
    make_durably: Callable[..., Durably],
) -> None:
    """heartbeat_interval = stale_threshold / 2 is accepted, and then really holds a run."""
    log = SideLog()
    release = threading.Event()

    def fn(step: StepContext, payload: Payload) -> None:
        step.run("s1", _recorded(log, step, "s1", lambda: release.wait(30) and None))

    job = define_job(name="long", input=Payload, run=fn)
    a = _worker(make_durably, "A", heartbeat_interval=STALE / 2)
    b = _worker(make_durably, "B", heartbeat_interval=STALE / 2)
    a.register({"long": job})
    b.register({"long": job})
    run = a.jobs.long.trigger({})
    owner = _thread(a.process_one, "A")
    wait_until(lambda: log.started(run.id, "s1", "A"))
    b.start()
    try:
        taken_over = _within(lambda: log.started(run.id, "s1", "B"), 3 * STALE)
    finally:
        release.set()
    owner.join(20)
    wait_until(lambda: _status(a, run.id) in TERMINAL, timeout=30)
    b.stop()

    assert not taken_over, f"B started s1 while A still executed it: {log.of(run.id)}"
    assert log.starts(run.id) == Counter({"s1": 1})
    assert _status(a, run.id) == "completed"


# -- 6. delete_run racing retry -------------------------------------------------------


def test_delete_run_racing_retry_never_leaves_a_run_without_its_completed_steps(
    make_durably: Callable[..., Durably],
) -> None:
    """Whichever of delete_run and retry wins, a run that still exists keeps its completed
    steps, and re-executing it does not run them again."""
    rounds = 40
    log = SideLog()
    fail = {"on": True}

    def fn(step: StepContext, payload: Payload) -> None:
        step.run("a", _recorded(log, step, "a"))
        step.run("b", _recorded(log, step, "b"))

        def c() -> None:
            if fail["on"]:
                raise RuntimeError("boom")

        step.run("c", c)

    job = define_job(name="flaky", input=Payload, run=fn)
    d1 = _worker(make_durably, "D1")
    d2 = _worker(make_durably, "D2")
    d1.register({"flaky": job})
    d2.register({"flaky": job})
    runs = d1.jobs.flaky.batch_trigger([{"n": i} for i in range(rounds)])
    assert d1.process_until_idle() == rounds
    assert {_status(d1, r.id) for r in runs} == {"failed"}
    fail["on"] = False

    errors: list[str] = []

    def race(barrier: threading.Barrier, action: Callable[[str], None], run_id: str) -> None:
        barrier.wait(10)
        try:
            action(run_id)
        except (InvalidRunStateError, RunNotFoundError):
            pass  # the other call won
        except Exception as exc:  # e.g. a deadlock the backend resolved by rolling back
            errors.append(f"{action.__name__}: {type(exc).__name__}")

    for run in runs:
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=race, args=(barrier, action, run.id), daemon=True)
            for action in (d1.delete_run, d2.retry)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)

    survivors = [r.id for r in runs if d1.get_run(r.id) is not None]
    broken = {
        rid: [(s.name, s.status) for s in d1.get_steps(rid)]
        for rid in survivors
        if [(s.name, s.status) for s in d1.get_steps(rid) if s.status == "completed"]
        != [("a", "completed"), ("b", "completed")]
    }
    assert not broken, f"{len(broken)} of {len(survivors)} surviving runs lost steps: {broken}"

    print(f"errors of the racing calls: {Counter(errors)}")
    d1.process_until_idle()
    for rid in survivors:
        assert log.starts(rid) == Counter({"a": 1, "b": 1}), (rid, log.of(rid))


# -- 7. cancel from another instance --------------------------------------------------


def test_cancel_from_another_instance_during_a_step_stops_the_run_before_its_next_step(
    make_durably: Callable[..., Durably],
) -> None:
    """Another instance has no in-process link to the executing worker: the database is
    the only channel, and the next step must not start."""
    log = SideLog()
    release = threading.Event()

    def fn(step: StepContext, payload: Payload) -> None:
        step.run("s1", _recorded(log, step, "s1", lambda: release.wait(30) and None))
        step.run("s2", _recorded(log, step, "s2"))

    job = define_job(name="long", input=Payload, run=fn)
    a = _worker(make_durably, "A")
    other = _worker(make_durably, "other")
    a.register({"long": job})
    other.register({"long": job})
    run = a.jobs.long.trigger({})
    owner = _thread(a.process_one, "A")
    wait_until(lambda: log.started(run.id, "s1"))
    other.cancel(run.id)
    release.set()
    owner.join(20)
    assert not owner.is_alive()

    assert not log.started(run.id, "s2"), log.of(run.id)
    assert _status(a, run.id) == "cancelled"


def test_cancel_from_another_instance_between_steps_stops_the_run_before_its_next_step(
    make_durably: Callable[..., Durably],
) -> None:
    """The job is between two steps (no step in flight) when another instance cancels
    it; long heartbeat settings make the database the only way the worker can learn it."""
    log = SideLog()
    at_gate = threading.Event()
    release = threading.Event()

    def fn(step: StepContext, payload: Payload) -> None:
        step.run("s1", _recorded(log, step, "s1"))
        at_gate.set()
        release.wait(30)  # job code outside any step
        step.run("s2", _recorded(log, step, "s2"))

    job = define_job(name="gated", input=Payload, run=fn)
    a = _worker(make_durably, "A", heartbeat_interval=20.0, stale_threshold=60.0)
    other = _worker(make_durably, "other", heartbeat_interval=20.0, stale_threshold=60.0)
    a.register({"gated": job})
    other.register({"gated": job})
    run = a.jobs.gated.trigger({})
    owner = _thread(a.process_one, "A")
    assert at_gate.wait(20)
    other.cancel(run.id)
    release.set()
    owner.join(20)
    assert not owner.is_alive()

    assert not log.started(run.id, "s2"), f"s2 started after the cancel: {log.of(run.id)}"
    assert _status(a, run.id) == "cancelled"
    assert [s.name for s in a.get_steps(run.id)] == ["s1"]


# -- 8. a concurrency key freed while its step still runs ------------------------------


def test_concurrency_key_is_not_handed_on_while_the_cancelled_holders_step_still_runs(
    make_durably: Callable[..., Durably],
) -> None:
    """Cancelling X marks it cancelled at once, but X's step body is still executing on
    worker A: Y (same key) must not start before that body returned."""
    log = SideLog()
    release = threading.Event()
    x_step_running = threading.Event()
    y_started_while_x_ran: list[bool] = []

    def x_body() -> None:
        x_step_running.set()
        try:
            release.wait(30)
        finally:
            x_step_running.clear()

    def fn(step: StepContext, payload: Payload) -> None:
        if payload.n == 0:  # X
            step.run("x1", _recorded(log, step, "x1", x_body))
            step.run("x2", _recorded(log, step, "x2"))
        else:  # Y

            def y_body() -> None:
                y_started_while_x_ran.append(x_step_running.is_set())

            step.run("y1", _recorded(log, step, "y1", y_body))

    job = define_job(name="keyed", input=Payload, run=fn)
    a = _worker(make_durably, "A")
    b = _worker(make_durably, "B")
    other = _worker(make_durably, "other")
    for d in (a, b, other):
        d.register({"keyed": job})
    x = a.jobs.keyed.trigger({"n": 0}, concurrency_key="k")
    owner = _thread(a.process_one, "A")
    wait_until(x_step_running.is_set)
    y = a.jobs.keyed.trigger({"n": 1}, concurrency_key="k")
    b.start()
    other.cancel(x.id)
    try:
        early = _within(lambda: log.started(y.id, "y1"), 3 * STALE)
    finally:
        release.set()
    owner.join(20)
    wait_until(lambda: _status(a, y.id) == "completed", timeout=30)
    b.stop()

    assert not early, f"Y started while X's step still ran: {log.entries}"
    assert y_started_while_x_ran == [False], log.entries
    assert _status(a, x.id) == "cancelled"
    assert not log.started(x.id, "x2")


# -- 10. runs that would re-execute forever -------------------------------------------

MEGABYTE = "x" * (1 << 20)
BAD_TEXT_CASES = {
    "step-name-lone-surrogate": ("name", "\ud800"),
    "step-name-nul": ("name", "a\x00b"),
    "step-name-300-chars": ("name", "s" * 300),
    "error-1mb": ("error", MEGABYTE),
    "error-lone-surrogate": ("error", "bad \ud800 text"),
    "error-nul": ("error", "bad \x00 text"),
    "progress-lone-surrogate": ("progress", "bad \ud800 text"),
    "log-lone-surrogate": ("log", "bad \ud800 text"),
}


@pytest.mark.parametrize("case", list(BAD_TEXT_CASES))
def test_run_with_text_the_database_cannot_store_ends_instead_of_re_executing(
    make_durably: Callable[..., Durably], case: str
) -> None:
    """Text a backend refuses (lone surrogate, NUL, too long) must end the run, failed
    with an error or completed with the text sanitised; left `running`, it goes stale and
    is re-executed after every recovery, forever."""
    from durably.plugins import with_log_persistence

    where, text = BAD_TEXT_CASES[case]
    calls: list[float] = []

    def fn(step: StepContext, payload: Payload) -> None:
        calls.append(time.monotonic())
        if where == "name":
            step.run(text, lambda: 1)
        elif where == "error":

            def boom() -> None:
                raise RuntimeError(text)

            step.run("boom", boom)
        elif where == "progress":
            step.progress(1, 2, text)
        else:
            step.log.info(text)
        step.run("after", lambda: 2)

    job = define_job(name="texts", input=Payload, run=fn)
    a = _worker(make_durably, "A")
    a.use(with_log_persistence())
    a.register({"texts": job})
    run = a.jobs.texts.trigger({})
    a.start()
    # generous: several stale thresholds, in which today's code re-executes the run
    _within(lambda: _status(a, run.id) in TERMINAL or len(calls) > 1, 4 * STALE)
    a.stop(timeout=5)

    final = a.get_run(run.id)
    assert final is not None
    assert final.status in TERMINAL, f"run still {final.status}; job function called {len(calls)}x"
    assert len(calls) == 1, f"job function called {len(calls)} times"
    if final.status == "failed":
        assert final.error


@pytest.mark.parametrize(
    "bad_name", ["a\x00b", "\ud800", "j" * 300], ids=["nul", "lone-surrogate", "300-chars"]
)
def test_job_name_the_database_cannot_store_is_refused_and_other_jobs_still_run(
    make_durably: Callable[..., Durably], bad_name: str
) -> None:
    """An unstorable job name is refused at define_job/register; registered anyway, it
    would break the claim statement of every job of the worker."""
    a = _worker(make_durably, "A")

    def nothing(step: StepContext, payload: Payload) -> int:
        return step.run("one", lambda: 1)

    good = define_job(name="good", input=Payload, run=nothing)
    refused = False
    try:
        bad = define_job(name=bad_name, input=Payload, run=nothing)
        a.register({"bad": bad})
    except DurablyError:
        refused = True
    a.register({"good": good})
    run = a.jobs.good.trigger({})
    a.start()
    ran = _within(lambda: _status(a, run.id) == "completed", 4 * STALE)
    a.stop(timeout=5)

    assert refused, f"job name {bad_name[:20]!r} was accepted; the other job ran: {ran}"
    assert ran, a.get_run(run.id)
