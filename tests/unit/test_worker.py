"""The worker: start/stop, process_one, concurrency, concurrency keys, wake-ups, release."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from typing import Any

import pytest
from _api_helpers import (
    Gate,
    Recorder,
    SimulatedCrash,
    in_background,
    sqlite_path,
    wait_for_status,
    wait_until,
)

from durably import Durably, StepContext, create_durably, define_job

MakeDurably = Callable[..., Durably]


@define_job(name="quick")
def quick_job(step: StepContext, payload: Any) -> Any:
    return step.run("echo", lambda: payload)


class ConcurrencyProbe:
    """Tracks how many job executions overlap, overall and per concurrency key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active: Counter[str] = Counter()
        self.max_active: Counter[str] = Counter()
        self.order: list[Any] = []

    def enter(self, key: str, label: Any) -> None:
        with self._lock:
            self.active[key] += 1
            self.max_active[key] = max(self.max_active[key], self.active[key])
            self.order.append(label)

    def leave(self, key: str) -> None:
        with self._lock:
            self.active[key] -= 1


# -- start / stop / context manager ----------------------------------------------------


def test_start_runs_pending_runs_in_the_background_and_stop_stops_claiming(
    durably: Durably,
) -> None:
    handle = durably.register({"job": quick_job})["job"]
    run = handle.trigger({"v": 1})
    durably.start()
    done = wait_for_status(durably, run.id, "completed")
    assert done.output == {"v": 1}
    durably.stop()
    late = handle.trigger({"v": 2})
    # nothing claimed it: it is still there for this thread to process
    assert durably.process_one() is True
    assert durably.get_run(late.id).status == "completed"  # type: ignore[union-attr]


def test_start_returns_at_once_and_the_worker_can_be_restarted(durably: Durably) -> None:
    gate = Gate()

    @define_job(name="gated")
    def job(step: StepContext, payload: Any) -> None:
        step.run("wait", gate.pass_through)

    handles = durably.register({"gated": job, "quick": quick_job})
    gated = handles["gated"].trigger({})
    durably.start()  # returns although the run blocks
    gate.wait_entered()
    gate.open()
    wait_for_status(durably, gated.id, "completed")
    durably.stop()
    durably.start()
    again = handles["quick"].trigger({"v": 3})
    wait_for_status(durably, again.id, "completed")


def test_a_second_start_is_a_no_op(make_durably: MakeDurably) -> None:
    d = make_durably(max_concurrent_runs=1)
    probe = ConcurrencyProbe()

    @define_job(name="probed")
    def job(step: StepContext, payload: Any) -> None:
        probe.enter("all", payload["i"])
        time.sleep(0.1)
        probe.leave("all")

    handle = d.register({"job": job})["job"]
    d.start()
    d.start()
    runs = handle.batch_trigger([{"i": i} for i in range(4)])
    for run in runs:
        wait_for_status(d, run.id, "completed")
    assert probe.max_active["all"] == 1
    assert probe.order == [0, 1, 2, 3]


def test_context_manager_waits_for_runs_in_flight_then_closes(
    db_url: str, make_durably: MakeDurably
) -> None:
    gate = Gate()

    @define_job(name="in-flight")
    def job(step: StepContext, payload: Any) -> str:
        step.run("wait", gate.pass_through)
        return "finished"

    with create_durably(db_url, polling_interval=0.05) as d:
        d.migrate()
        handle = d.register({"job": job})["job"]
        d.start()
        run = handle.trigger({})
        gate.wait_entered()
        opener = threading.Timer(0.2, gate.open)
        opener.start()
    opener.join()
    checker = make_durably()
    final = checker.get_run(run.id)
    assert final is not None and final.status == "completed" and final.output == "finished"
    with pytest.raises(Exception):  # noqa: B017 - a closed instance must refuse work
        d.process_one()


def test_stop_without_timeout_waits_for_the_run_in_flight_to_complete(durably: Durably) -> None:
    gate = Gate()

    @define_job(name="finish-me")
    def job(step: StepContext, payload: Any) -> str:
        step.run("wait", gate.pass_through)
        step.run("after", lambda: "after")
        return "done"

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    durably.start()
    gate.wait_entered()
    stopper, outcome = in_background(durably.stop)
    gate.open()
    stopper.join(20)
    assert not stopper.is_alive() and "error" not in outcome
    final = durably.get_run(run.id)
    assert final is not None and final.status == "completed" and final.output == "done"


def test_stop_during_a_run_claims_no_further_run_when_that_run_ends(durably: Durably) -> None:
    """A run's final write claims the next run only while the worker is not stopping."""
    gate = Gate()

    @define_job(name="first-of-many")
    def job(step: StepContext, payload: Any) -> str:
        if payload["i"] == 0:
            step.run("wait", gate.pass_through)
        return "done"

    handle = durably.register({"job": job})["job"]
    runs = handle.batch_trigger([{"i": i} for i in range(4)])
    durably.start()
    gate.wait_entered()
    stopper, outcome = in_background(durably.stop)
    wait_until(durably._worker._stopping.is_set)
    gate.open()
    stopper.join(20)
    assert not stopper.is_alive() and "error" not in outcome
    statuses = [durably.get_run(r.id).status for r in runs]  # type: ignore[union-attr]
    assert statuses == ["completed", "pending", "pending", "pending"]
    assert durably.process_until_idle() == 3


def test_stop_with_timeout_releases_the_run_at_its_next_step_boundary_for_another_worker(
    make_durably: MakeDurably,
) -> None:
    first = make_durably()
    second = make_durably()
    gate = Gate()
    calls: Counter[str] = Counter()

    @define_job(name="releasable")
    def job(step: StepContext, payload: Any) -> str:
        step.run("one", lambda: calls.update(["one"]))

        def two() -> int:
            calls["two"] += 1
            gate.pass_through()
            return 2

        step.run("two", two)
        step.run("three", lambda: calls.update(["three"]))
        return "done"

    handle = first.register({"job": job})["job"]
    second.register({"job": job})
    run = handle.trigger({})
    first.start()
    gate.wait_entered()
    stopper, outcome = in_background(lambda: first.stop(timeout=0.2))
    time.sleep(0.5)  # let the timeout expire while step "two" is still in flight
    gate.open()
    stopper.join(20)
    assert not stopper.is_alive() and "error" not in outcome

    released = first.get_run(run.id)
    assert released is not None and released.status == "pending"
    assert [s.name for s in first.get_steps(run.id)] == ["one", "two"]
    # pending at once: another worker resumes it without waiting for staleness
    assert second.process_one()
    final = second.get_run(run.id)
    assert final is not None and final.status == "completed" and final.output == "done"
    assert calls == Counter(one=1, two=1, three=1)
    assert [(s.name, s.index) for s in second.get_steps(run.id)] == [
        ("one", 0),
        ("two", 1),
        ("three", 2),
    ]


def test_stop_keeps_heartbeating_the_run_in_flight_so_no_other_worker_steals_it(
    make_durably: MakeDurably,
) -> None:
    options = {"heartbeat_interval": 0.1, "stale_threshold": 0.5}
    first = make_durably(**options)
    second = make_durably(**options)
    gate = Gate()
    calls: Counter[str] = Counter()

    @define_job(name="long-running")
    def job(step: StepContext, payload: Any) -> str:
        def slow() -> None:
            calls["slow"] += 1
            gate.pass_through()

        step.run("slow", slow)
        return "done"

    handle = first.register({"job": job})["job"]
    second.register({"job": job})
    stolen = Recorder(second, "run:start")
    run = handle.trigger({})
    first.start()
    gate.wait_entered()
    stopper, _ = in_background(first.stop)
    second.start()
    time.sleep(1.5)  # three stale thresholds: a run without heartbeats would be reclaimed
    gate.open()
    stopper.join(20)
    final = wait_for_status(first, run.id, "completed")
    assert final.output == "done"
    assert calls == Counter(slow=1)
    assert stolen.events == []


def test_a_run_retried_while_its_cancelled_execution_is_in_flight_keeps_its_heartbeat(
    make_durably: MakeDurably,
) -> None:
    options = {"heartbeat_interval": 0.1, "stale_threshold": 0.5}
    first = make_durably(**options)
    other = make_durably(**options)
    gates = [Gate(), Gate()]
    lock = threading.Lock()
    executions: list[int] = []

    @define_job(name="retried-in-flight")
    def job(step: StepContext, payload: Any) -> int:
        with lock:
            executions.append(len(executions))
            n = executions[-1]
        step.run("first", lambda: gates[n].pass_through())
        return n

    handle = first.register({"job": job})["job"]
    other.register({"job": job})
    stolen = Recorder(other, "run:start")
    run = handle.trigger({})
    old, _ = in_background(first.process_one)
    gates[0].wait_entered()
    first.cancel(run.id)
    first.retry(run.id)
    new, _ = in_background(first.process_one)
    gates[1].wait_entered()
    gates[0].open()  # the cancelled execution ends while the new one is in flight
    old.join(10)
    other.start()
    time.sleep(1.5)  # three stale thresholds: without heartbeats the run would be stolen
    gates[1].open()
    new.join(10)
    final = wait_for_status(first, run.id, "completed")
    assert final.output == 1
    assert executions == [0, 1]
    assert stolen.events == []


def test_a_worker_whose_run_was_reclaimed_can_no_longer_change_it(
    make_durably: MakeDurably, db_url: str
) -> None:
    # the first worker heartbeats rarely, so the faked staleness below is not undone
    first = make_durably(heartbeat_interval=5.0, stale_threshold=10.0)
    second = make_durably()
    gate = Gate()
    lock = threading.Lock()
    executions: list[str] = []

    @define_job(name="reclaimed")
    def job(step: StepContext, payload: Any) -> str:
        with lock:
            who = "first" if not executions else "second"
            executions.append(who)

        def work() -> str:
            if who == "first":
                gate.pass_through()
            return f"{who} result"

        step.progress(1, 2, who)
        return step.run("work", work)

    handle = first.register({"job": job})["job"]
    second.register({"job": job})
    first_events = Recorder(first)
    run = handle.trigger({})
    thread, outcome = in_background(first.process_one)
    gate.wait_entered()
    with closing(sqlite3.connect(sqlite_path(db_url))) as raw:
        raw.execute(
            "UPDATE durably_runs SET heartbeat_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?",
            (run.id,),
        )
        raw.commit()
    second.start()
    done = wait_for_status(second, run.id, "completed")
    assert done.output == "second result"
    gate.open()  # the first worker finishes its step after losing the run
    thread.join(10)
    assert "error" not in outcome
    final = second.get_run(run.id)
    assert final is not None
    assert (final.status, final.output) == ("completed", "second result")
    assert final.progress is not None and final.progress.message == "second"
    assert [(s.name, s.output) for s in second.get_steps(run.id)] == [("work", "second result")]
    assert executions == ["first", "second"]
    assert [e.type for e in first_events.of(run_id=run.id)] == [
        "run:trigger",
        "run:start",
        "run:progress",
        "step:start",
    ]


def test_a_stale_running_run_is_reclaimed_and_resumes_after_its_completed_steps(
    make_durably: MakeDurably, db_url: str
) -> None:
    d = make_durably()
    calls: Counter[str] = Counter()
    state: dict[str, bool] = {}

    @define_job(name="stale")
    def job(step: StepContext, payload: Any) -> str:
        step.run("done-before", lambda: calls.update(["done-before"]))

        def crash_once() -> None:
            calls["crash"] += 1
            if not state.get("crashed"):
                state["crashed"] = True
                raise SimulatedCrash

        step.run("crash", crash_once)
        return "recovered"

    handle = d.register({"job": job})["job"]
    run = handle.trigger({})
    with pytest.raises(SimulatedCrash):
        d.process_one()
    # make it look like a worker died holding the run: running, heartbeat long ago
    with closing(sqlite3.connect(sqlite_path(db_url))) as raw:
        raw.execute(
            "UPDATE durably_runs SET status = 'running', "
            "heartbeat_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?",
            (run.id,),
        )
        raw.commit()
    assert d.get_run(run.id).status == "running"  # type: ignore[union-attr]
    d.start()
    final = wait_for_status(d, run.id, "completed")
    assert final.output == "recovered"
    assert calls == Counter({"done-before": 1, "crash": 2})


# -- process_one / process_until_idle --------------------------------------------------


def test_process_one_returns_false_when_nothing_is_claimable(durably: Durably) -> None:
    durably.register({"job": quick_job})
    assert durably.process_one() is False


def test_process_one_runs_exactly_one_run_in_the_calling_thread(durably: Durably) -> None:
    threads: list[int] = []

    @define_job(name="where")
    def job(step: StepContext, payload: Any) -> None:
        threads.append(threading.get_ident())

    handle = durably.register({"job": job})["job"]
    first, second = handle.trigger({}), handle.trigger({})
    assert durably.process_one() is True
    assert durably.get_run(first.id).status == "completed"  # type: ignore[union-attr]
    assert durably.get_run(second.id).status == "pending"  # type: ignore[union-attr]
    assert threads == [threading.get_ident()]


def test_process_until_idle_returns_how_many_ran_and_honours_max_runs(durably: Durably) -> None:
    handle = durably.register({"job": quick_job})["job"]
    handle.batch_trigger([{"i": i} for i in range(5)])
    assert durably.process_until_idle(max_runs=2) == 2
    assert len(durably.get_runs(status="pending")) == 3
    assert durably.process_until_idle(max_runs=0) == 0
    assert durably.process_until_idle() == 3
    assert durably.process_until_idle() == 0
    assert len(durably.get_runs(status="completed")) == 5


def test_failed_runs_count_as_processed(durably: Durably) -> None:
    @define_job(name="fails")
    def job(step: StepContext, payload: Any) -> None:
        raise RuntimeError("no")

    handle = durably.register({"job": job})["job"]
    handle.batch_trigger([{}, {}])
    assert durably.process_until_idle() == 2
    assert len(durably.get_runs(status="failed")) == 2


def test_runs_are_claimed_oldest_first(durably: Durably) -> None:
    starts = Recorder(durably, "run:start")
    handle = durably.register({"job": quick_job})["job"]
    single = [handle.trigger({"i": i}).id for i in range(3)]
    batch = [r.id for r in handle.batch_trigger([{"i": i} for i in range(3, 6)])]
    assert durably.process_until_idle() == 6
    assert [e.run_id for e in starts.events] == single + batch


def test_a_worker_claims_only_runs_of_jobs_registered_with_it(
    durably: Durably, make_durably: MakeDurably
) -> None:
    @define_job(name="elsewhere")
    def other_job(step: StepContext, payload: Any) -> None:
        return None

    durably.register({"quick": quick_job})
    other = make_durably()
    foreign = other.register({"other": other_job})["other"].trigger({})
    assert durably.process_one() is False
    assert durably.get_run(foreign.id).status == "pending"  # type: ignore[union-attr]
    assert other.process_one() is True


def test_process_one_picks_up_a_run_registered_after_it_was_triggered(
    durably: Durably, make_durably: MakeDurably
) -> None:
    other = make_durably()
    run = other.register({"quick": quick_job})["quick"].trigger({"late": True})
    assert durably.process_one() is False
    durably.register({"quick": quick_job})
    assert durably.process_one() is True
    assert durably.get_run(run.id).output == {"late": True}  # type: ignore[union-attr]


# -- concurrency -----------------------------------------------------------------------


def test_max_concurrent_runs_executes_runs_at_the_same_time(make_durably: MakeDurably) -> None:
    d = make_durably(max_concurrent_runs=3)
    barrier = threading.Barrier(3, timeout=10)

    @define_job(name="together")
    def job(step: StepContext, payload: Any) -> int:
        # passes only if three runs are inside this step at the same moment
        return step.run("meet", lambda: barrier.wait())

    handle = d.register({"job": job})["job"]
    runs = handle.batch_trigger([{}, {}, {}])
    d.start()
    for run in runs:
        final = wait_for_status(d, run.id, "completed", "failed")
        assert final.status == "completed", final.error


def test_two_workers_never_execute_the_same_run(make_durably: MakeDurably) -> None:
    workers = [make_durably(max_concurrent_runs=3) for _ in range(2)]
    lock = threading.Lock()
    executions: Counter[str] = Counter()

    @define_job(name="counted")
    def job(step: StepContext, payload: Any) -> None:
        with lock:
            executions[step.run_id] += 1
        step.run("work", lambda: time.sleep(0.005))

    for w in workers:
        w.register({"job": job})
    runs = workers[0].jobs.job.batch_trigger([{"i": i} for i in range(30)])
    for w in workers:
        w.start()
    for run in runs:
        wait_for_status(workers[0], run.id, "completed")
    assert executions == Counter({run.id: 1 for run in runs})


def test_runs_with_one_concurrency_key_never_run_together_and_wait_in_order(
    make_durably: MakeDurably,
) -> None:
    d = make_durably(max_concurrent_runs=3)
    probe = ConcurrencyProbe()
    gate = Gate()

    @define_job(name="keyed")
    def keyed(step: StepContext, payload: Any) -> None:
        probe.enter("k", payload["i"])
        if payload["i"] == 0:
            gate.pass_through()
        else:
            time.sleep(0.05)
        probe.leave("k")

    handles = d.register({"keyed": keyed, "quick": quick_job})
    runs = [handles["keyed"].trigger({"i": i}, concurrency_key="k") for i in range(3)]
    d.start()
    gate.wait_entered()
    # the other slots are alive and claiming: an unkeyed run gets through meanwhile
    free = handles["quick"].trigger({"free": True})
    wait_for_status(d, free.id, "completed")
    assert [d.get_run(r.id).status for r in runs] == [  # type: ignore[union-attr]
        "running",
        "pending",
        "pending",
    ]
    gate.open()
    for run in runs:
        wait_for_status(d, run.id, "completed")
    assert probe.max_active["k"] == 1
    assert probe.order == [0, 1, 2]


def test_concurrency_keys_are_global_across_jobs(make_durably: MakeDurably) -> None:
    d = make_durably(max_concurrent_runs=2)
    gate = Gate()

    @define_job(name="holder")
    def holder(step: StepContext, payload: Any) -> None:
        step.run("hold", gate.pass_through)

    handles = d.register({"holder": holder, "quick": quick_job})
    held = handles["holder"].trigger({}, concurrency_key="shared")
    blocked = handles["quick"].trigger({"blocked": True}, concurrency_key="shared")
    d.start()
    gate.wait_entered()
    free = handles["quick"].trigger({"free": True}, concurrency_key="other")
    wait_for_status(d, free.id, "completed")
    assert d.get_run(blocked.id).status == "pending"  # type: ignore[union-attr]
    gate.open()
    wait_for_status(d, held.id, "completed")
    wait_for_status(d, blocked.id, "completed")


def test_different_concurrency_keys_run_concurrently(make_durably: MakeDurably) -> None:
    d = make_durably(max_concurrent_runs=2)
    barrier = threading.Barrier(2, timeout=10)

    @define_job(name="pair")
    def job(step: StepContext, payload: Any) -> None:
        step.run("meet", lambda: barrier.wait())

    handle = d.register({"job": job})["job"]
    a = handle.trigger({}, concurrency_key="a")
    b = handle.trigger({}, concurrency_key="b")
    d.start()
    for run in (a, b):
        final = wait_for_status(d, run.id, "completed", "failed")
        assert final.status == "completed", final.error


def test_a_concurrency_key_is_free_again_after_the_run_fails_or_is_cancelled(
    durably: Durably,
) -> None:
    @define_job(name="fails")
    def fails(step: StepContext, payload: Any) -> None:
        raise RuntimeError("no")

    handles = durably.register({"fails": fails, "quick": quick_job})
    handles["fails"].trigger({}, concurrency_key="k")
    cancelled = handles["quick"].trigger({}, concurrency_key="k")
    durably.cancel(cancelled.id)
    after = handles["quick"].trigger({"after": True}, concurrency_key="k")
    assert durably.process_until_idle() == 2
    assert durably.get_run(after.id).status == "completed"  # type: ignore[union-attr]


# -- wake-ups and polling --------------------------------------------------------------


def test_an_in_process_trigger_wakes_an_idle_worker_at_once(make_durably: MakeDurably) -> None:
    d = make_durably(polling_interval=30)
    handle = d.register({"job": quick_job})["job"]
    d.start()
    first = handle.trigger({"i": 1})
    wait_for_status(d, first.id, "completed", timeout=5)
    time.sleep(0.2)  # let the worker go idle for its 30 s polling interval
    second = handle.trigger({"i": 2})
    # well before the 30 s polling interval
    wait_for_status(d, second.id, "completed", timeout=5)


def test_after_a_run_ends_the_worker_claims_the_next_at_once(make_durably: MakeDurably) -> None:
    d = make_durably(polling_interval=30)
    handle = d.register({"job": quick_job})["job"]
    d.start()
    time.sleep(0.2)  # idle
    runs = handle.batch_trigger([{"i": i} for i in range(5)])
    for run in runs:
        wait_for_status(d, run.id, "completed", timeout=5)


# -- resilience ------------------------------------------------------------------------


def test_a_raising_listener_does_not_stop_the_worker(durably: Durably) -> None:
    def broken(event: Any) -> None:
        raise RuntimeError("listener hiccup")

    durably.on("run:start", broken)
    durably.on("run:complete", broken)
    handle = durably.register({"job": quick_job})["job"]
    durably.start()
    runs = [handle.trigger({"i": i}) for i in range(3)]
    for run in runs:
        wait_for_status(durably, run.id, "completed")


def test_a_database_error_emits_worker_error_and_the_worker_goes_on(
    make_durably: MakeDurably, db_url: str
) -> None:
    d = make_durably()
    errors = Recorder(d, "worker:error")
    handle = d.register({"job": quick_job})["job"]
    raw = sqlite3.connect(sqlite_path(db_url), timeout=30)
    try:
        raw.execute("ALTER TABLE durably_runs RENAME TO durably_runs_hidden")
        raw.commit()
        d.start()
        wait_until(lambda: errors.events, timeout=10)
        raw.execute("ALTER TABLE durably_runs_hidden RENAME TO durably_runs")
        raw.commit()
    finally:
        raw.close()
    first = errors.events[0]
    assert first.type == "worker:error"
    assert isinstance(first.error, str) and "durably_runs" in first.error
    assert isinstance(first.context, str) and first.context
    assert getattr(first, "run_id", None) is None
    assert first.timestamp.tzinfo is not None
    run = handle.trigger({"after": "hiccup"})
    wait_for_status(d, run.id, "completed")
