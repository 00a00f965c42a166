"""step.log and step.progress; the log persistence plugin."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from _api_helpers import Recorder, SimulatedCrash, count_rows

from durably import Durably, LogEntry, Progress, StepContext, define_job
from durably.plugins import with_log_persistence


@define_job(name="chatty")
def chatty_job(step: StepContext, payload: Any) -> None:
    step.log.info("starting", {"count": 2})
    step.run("fetch", lambda: step.log.warn("slow fetch", None))
    step.run("save", lambda: step.log.error("save failed once", {"retry": True}))
    step.log.info("done")


def test_log_write_is_emitted_without_persistence_and_the_logs_table_stays_empty(
    durably: Durably, db_url: str
) -> None:
    events = Recorder(durably, "log:write")
    handle = durably.register({"job": chatty_job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    assert len(events.events) == 4
    assert durably.get_logs(run.id) == []
    assert count_rows(db_url, "durably_logs") == 0


def test_with_log_persistence_persists_every_log_with_step_name_and_level(
    durably: Durably,
) -> None:
    durably.use(with_log_persistence())
    handle = durably.register({"job": chatty_job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    logs = durably.get_logs(run.id)
    assert [(e.step_name, e.level, e.message, e.data) for e in logs] == [
        (None, "info", "starting", {"count": 2}),
        ("fetch", "warn", "slow fetch", None),
        ("save", "error", "save failed once", {"retry": True}),
        (None, "info", "done", None),
    ]
    for entry in logs:
        assert isinstance(entry, LogEntry)
        assert entry.run_id == run.id
        assert isinstance(entry.id, str) and entry.id
        assert isinstance(entry.created_at, datetime) and entry.created_at.tzinfo is not None
    assert len({e.id for e in logs}) == 4


def test_log_write_events_carry_the_step_name_inside_a_step_and_none_outside(
    durably: Durably,
) -> None:
    events = Recorder(durably, "log:write")
    handle = durably.register({"job": chatty_job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    assert [(e.run_id, e.step_name, e.level) for e in events.events] == [
        (run.id, None, "info"),
        (run.id, "fetch", "warn"),
        (run.id, "save", "error"),
        (run.id, None, "info"),
    ]


def test_logs_are_kept_per_run(durably: Durably) -> None:
    durably.use(with_log_persistence())

    @define_job(name="per-run")
    def job(step: StepContext, payload: Any) -> None:
        step.log.info(f"run {payload['i']}")

    handle = durably.register({"job": job})["job"]
    runs = [handle.trigger({"i": i}) for i in range(3)]
    assert durably.process_until_idle() == 3
    for i, run in enumerate(runs):
        assert [e.message for e in durably.get_logs(run.id)] == [f"run {i}"]


def test_logs_of_a_failing_step_are_persisted(durably: Durably) -> None:
    durably.use(with_log_persistence())

    @define_job(name="log-then-fail")
    def job(step: StepContext, payload: Any) -> None:
        def work() -> None:
            step.log.error("about to fail")
            raise RuntimeError("failed")

        step.run("work", work)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    stored = durably.get_run(run.id)
    assert stored is not None and stored.status == "failed"
    assert [(e.step_name, e.message) for e in durably.get_logs(run.id)] == [
        ("work", "about to fail")
    ]


def test_progress_is_stored_on_the_run_and_emitted(durably: Durably) -> None:
    events = Recorder(durably, "run:progress")
    seen: list[Any] = []

    @define_job(name="progress")
    def job(step: StepContext, payload: Any) -> None:
        step.progress(1, 3, "one of three")
        seen.append(durably.get_run(step.run_id).progress)  # type: ignore[union-attr]
        step.progress(2)
        seen.append(durably.get_run(step.run_id).progress)  # type: ignore[union-attr]

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.get_run(run.id).progress is None  # type: ignore[union-attr]
    assert durably.process_one()
    assert seen == [Progress(1, 3, "one of three"), Progress(2, None, None)]
    final = durably.get_run(run.id)
    assert final is not None and final.progress == Progress(2, None, None)
    assert isinstance(final.progress, Progress)
    assert [(e.run_id, e.job_name, e.progress) for e in events.events] == [
        (run.id, "progress", Progress(1, 3, "one of three")),
        (run.id, "progress", Progress(2, None, None)),
    ]


def test_progress_survives_a_resume(durably: Durably) -> None:
    state: dict[str, bool] = {}
    seen_on_resume: list[Any] = []

    @define_job(name="progress-resume")
    def job(step: StepContext, payload: Any) -> None:
        step.run("report", lambda: step.progress(5, 10, "halfway"))
        seen_on_resume.append(durably.get_run(step.run_id).progress)  # type: ignore[union-attr]

        def crash_once() -> None:
            if not state.get("crashed"):
                state["crashed"] = True
                raise SimulatedCrash

        step.run("crash", crash_once)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    with pytest.raises(SimulatedCrash):
        durably.process_one()
    interrupted = durably.get_run(run.id)
    assert interrupted is not None and interrupted.status == "pending"
    assert interrupted.progress == Progress(5, 10, "halfway")
    assert durably.process_one()
    # the progress step was replayed (not called), yet the stored progress is still there
    assert seen_on_resume == [Progress(5, 10, "halfway"), Progress(5, 10, "halfway")]
    final = durably.get_run(run.id)
    assert final is not None and final.status == "completed"
    assert final.progress == Progress(5, 10, "halfway")


def test_progress_survives_a_retry(durably: Durably) -> None:
    state = {"fail": True}

    @define_job(name="progress-retry")
    def job(step: StepContext, payload: Any) -> None:
        step.run("report", lambda: step.progress(3, 4))

        def flaky() -> None:
            if state["fail"]:
                raise RuntimeError("flaky")

        step.run("flaky", flaky)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    state["fail"] = False
    durably.retry(run.id)
    assert durably.process_one()
    final = durably.get_run(run.id)
    assert final is not None and final.status == "completed"
    assert final.progress == Progress(3, 4, None)
