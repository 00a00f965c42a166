"""Ids, names and keys compare byte for byte on every backend.

MySQL/MariaDB compare strings by the column's collation, and the server's default
(`utf8mb4_general_ci`, `utf8mb4_0900_ai_ci`) ignores case and accents, and on MariaDB
trailing spaces too (PAD SPACE): without revision 0002, "order-1" would find the run of
"Order-1" and the trigger would be silently dropped. PostgreSQL's default collations are
deterministic and SQLite's is BINARY: the same assertions run on every backend.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from _backends import SERVER_URLS
from conftest import wait_until

from durably import BatchItem, Durably, RunNotFoundError, StepContext, define_job
from durably._schema import TABLE_NAMES

# one key, then the same key with another case, another accent, a trailing space
LOOKALIKES = ("Order-1", "order-1", "ORDER-1", "Order-1 ", "Ordér-1")


@define_job(name="order")
def order(step: StepContext, payload: Any) -> Any:
    return step.run("echo", lambda: payload)


def test_idempotency_keys_differing_by_case_accent_or_trailing_space_make_distinct_runs(
    durably: Durably,
) -> None:
    handle = durably.register({"order": order})["order"]
    first = {key: handle.trigger({"o": i}, idempotency_key=key) for i, key in enumerate(LOOKALIKES)}
    assert len({run.id for run in first.values()}) == len(LOOKALIKES), {
        key: run.id for key, run in first.items()
    }
    # each key still finds its own run, with its own payload
    for i, key in enumerate(LOOKALIKES):
        again = handle.trigger({"o": "ignored"}, idempotency_key=key)
        assert (again.id, again.payload) == (first[key].id, {"o": i}), key
    stored = {(run.idempotency_key, run.payload["o"]) for run in durably.get_runs()}
    assert stored == {(key, i) for i, key in enumerate(LOOKALIKES)}


def test_batch_trigger_with_lookalike_idempotency_keys_makes_distinct_runs(
    durably: Durably,
) -> None:
    handle = durably.register({"order": order})["order"]
    runs = handle.batch_trigger([BatchItem({"o": k}, idempotency_key=k) for k in LOOKALIKES])
    assert len({run.id for run in runs}) == len(LOOKALIKES)
    assert len(durably.get_runs()) == len(LOOKALIKES)


def _holding_job(name: str, started: list[str], release: threading.Event) -> Any:
    def run(step: StepContext, payload: Any) -> str:
        started.append(step.run_id)
        if not release.wait(60):
            raise TimeoutError("the test never released the run")
        return step.run("done", lambda: "ok")

    return define_job(name=name, run=run)


def test_concurrency_keys_differing_only_by_case_do_not_exclude_each_other(
    make_durably: Callable[..., Durably],
) -> None:
    release = threading.Event()
    started: list[str] = []
    job = _holding_job("keyed", started, release)
    first_worker, second_worker = make_durably(), make_durably()
    handle = first_worker.register({"keyed": job})["keyed"]
    second_worker.register({"keyed": job})
    upper = handle.trigger({}, concurrency_key="K")
    same_key = handle.trigger({}, concurrency_key="K")
    lower = handle.trigger({}, concurrency_key="k")

    claimed: list[bool] = []
    holder = threading.Thread(target=lambda: claimed.append(first_worker.process_one()))
    holder.start()
    try:
        wait_until(lambda: upper.id in started)
        # "K" is held: the only claimable run is the one keyed "k"
        other = threading.Thread(target=lambda: claimed.append(second_worker.process_one()))
        other.start()
        try:
            wait_until(lambda: len(started) == 2 or not other.is_alive())
            statuses = {r.id: r.status for r in first_worker.get_runs()}
            assert statuses == {upper.id: "running", same_key.id: "pending", lower.id: "running"}
        finally:
            release.set()
            other.join(30)
    finally:
        release.set()
        holder.join(30)
    assert claimed == [True, True]
    assert first_worker.process_until_idle() == 1
    assert {r.status for r in first_worker.get_runs()} == {"completed"}


JOB_NAMES = ("Import", "import", "Impört", "Import ")


def test_job_names_differing_by_case_accent_or_trailing_space_are_distinct_jobs(
    make_durably: Callable[..., Durably],
) -> None:
    definitions = {name: define_job(name=name, run=order.fn) for name in JOB_NAMES}
    everyone = make_durably()
    handles = everyone.register({f"job{i}": d for i, d in enumerate(definitions.values())})
    by_name = {h.name: h for h in handles.values()}
    # one idempotency key for all: it is unique per job name only
    triggered = {
        name: by_name[name].trigger({"n": name}, idempotency_key="x") for name in JOB_NAMES
    }
    assert len({run.id for run in triggered.values()}) == len(JOB_NAMES)

    for name in JOB_NAMES:
        assert [r.id for r in everyone.get_runs(job_name=name)] == [triggered[name].id], name
        assert [r.id for r in everyone.get_runs(job_name=[name])] == [triggered[name].id], name
        assert [r.id for r in by_name[name].get_runs()] == [triggered[name].id], name
        others = [n for n in JOB_NAMES if n != name]
        assert by_name[name].get_run(triggered[others[0]].id) is None

    # a worker that knows only "Import" claims only its run
    only_import = make_durably()
    only_import.register({"job": definitions["Import"]})
    assert only_import.process_until_idle() == 1
    statuses = {r.job_name: r.status for r in everyone.get_runs()}
    assert statuses == {
        "Import": "completed",
        "import": "pending",
        "Impört": "pending",
        "Import ": "pending",
    }


def test_a_run_id_with_its_case_changed_is_not_found(durably: Durably) -> None:
    handle = durably.register({"order": order})["order"]
    run = handle.trigger({"o": 1})
    assert durably.process_one()
    assert run.id != run.id.lower()
    changed = run.id.lower()
    assert durably.get_run(run.id) is not None
    assert durably.get_run(changed) is None
    assert handle.get_run(changed) is None
    assert durably.get_steps(changed) == []
    assert [s.name for s in durably.get_steps(run.id)] == ["echo"]
    with pytest.raises(RunNotFoundError):
        durably.retry(changed)
    with pytest.raises(RunNotFoundError):
        durably.delete_run(changed)
    assert durably.get_run(run.id) is not None


@define_job(name="lookalike-steps")
def lookalike_steps(step: StepContext, payload: Any) -> list[str]:
    return [step.run(name, lambda name=name: name) for name in LOOKALIKES]


def test_step_names_differing_by_case_accent_or_trailing_space_are_distinct_steps(
    durably: Durably,
) -> None:
    handle = durably.register({"steps": lookalike_steps})["steps"]
    run = handle.trigger({})
    assert durably.process_one()
    finished = durably.get_run(run.id)
    assert finished is not None and finished.status == "completed", finished
    assert finished.output == list(LOOKALIKES)
    assert [(s.name, s.output) for s in durably.get_steps(run.id)] == [
        (name, name) for name in LOOKALIKES
    ]


@pytest.mark.backends("mysql")
def test_every_string_column_of_durablys_tables_has_a_no_pad_binary_collation(
    durably: Durably,
) -> None:
    # what the tests above cannot reach (lease_owner, failed_step_name, ...) is kept
    # byte for byte by the same collation
    engine = sa.create_engine(SERVER_URLS["mysql"])
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND COLLATION_NAME IS NOT NULL"
            ).all()
            defaults = conn.exec_driver_sql(
                "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE()"
            ).all()
    finally:
        engine.dispose()
    ours = [(table, column, collation) for table, column, collation in rows if table in TABLE_NAMES]
    assert {column for table, column, _ in ours if table == "durably_runs"} >= {
        "id",
        "job_name",
        "status",
        "idempotency_key",
        "concurrency_key",
        "active_concurrency_key",
        "failed_step_name",
        "lease_owner",
    }
    (collation,) = {collation for _, _, collation in ours}
    assert collation in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")
    # a column that a later revision adds inherits its table's default
    assert {t: c for t, c in defaults if t in TABLE_NAMES} == dict.fromkeys(TABLE_NAMES, collation)
