"""register, jobs, get_job, use, create_durably and its options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from durably import (
    Durably,
    DurablyError,
    JobHandle,
    StepContext,
    create_durably,
    define_job,
    resolve_dialect,
)


class In(BaseModel):
    org_id: str


@define_job(name="sync-users", input=In)
def sync_users(step: StepContext, payload: In) -> str:
    return payload.org_id


@define_job(name="send-mail")
def send_mail(step: StepContext, payload: Any) -> None:
    return None


def test_register_returns_handles_under_the_given_keys(durably: Durably) -> None:
    handles = durably.register({"sync_users": sync_users, "send_mail": send_mail})
    assert set(handles) == {"sync_users", "send_mail"}
    assert all(isinstance(h, JobHandle) for h in handles.values())
    assert handles["sync_users"].name == "sync-users"
    assert handles["send_mail"].name == "send-mail"


def test_jobs_namespace_gives_attribute_and_item_access(durably: Durably) -> None:
    handles = durably.register({"sync_users": sync_users})
    assert durably.jobs.sync_users is handles["sync_users"]
    assert durably.jobs["sync_users"] is handles["sync_users"]
    durably.register({"send_mail": send_mail})
    assert durably.jobs.send_mail.name == "send-mail"
    assert durably.jobs.sync_users is handles["sync_users"]


def test_jobs_namespace_raises_for_unknown_names(durably: Durably) -> None:
    with pytest.raises(AttributeError):
        _ = durably.jobs.nope
    with pytest.raises(KeyError):
        _ = durably.jobs["nope"]


def test_get_job_finds_the_handle_by_job_name(durably: Durably) -> None:
    handles = durably.register({"sync_users": sync_users})
    assert durably.get_job("sync-users") is handles["sync_users"]
    assert durably.get_job("sync_users") is None
    assert durably.get_job("unknown") is None


def test_registering_the_same_definition_again_returns_the_same_handle(durably: Durably) -> None:
    first = durably.register({"sync_users": sync_users})["sync_users"]
    second = durably.register({"sync_users": sync_users})["sync_users"]
    third = durably.register({"another_key": sync_users})["another_key"]
    assert first is second is third
    assert durably.get_job("sync-users") is first


def test_a_different_definition_under_a_registered_job_name_raises(durably: Durably) -> None:
    handle = durably.register({"sync_users": sync_users})["sync_users"]

    @define_job(name="sync-users")
    def impostor(step: StepContext, payload: Any) -> None:
        return None

    with pytest.raises(DurablyError):
        durably.register({"impostor": impostor})
    assert durably.get_job("sync-users") is handle
    run = handle.trigger({"org_id": "o"})
    assert durably.process_one()
    assert durably.get_run(run.id).output == "o"  # type: ignore[union-attr]


def test_a_registered_job_is_triggered_and_run_through_its_handle(durably: Durably) -> None:
    durably.register({"sync_users": sync_users})
    run = durably.jobs.sync_users.trigger({"org_id": "acme"})
    assert durably.process_one()
    assert durably.get_run(run.id).output == "acme"  # type: ignore[union-attr]


def test_use_installs_a_plugin_by_calling_install(durably: Durably) -> None:
    installed: list[Durably] = []
    seen: list[str] = []

    class Plugin:
        def install(self, d: Durably) -> None:
            installed.append(d)
            d.on("run:trigger", lambda e: seen.append(e.run_id))

    durably.use(Plugin())
    assert installed == [durably]
    run = durably.register({"send_mail": send_mail})["send_mail"].trigger({})
    assert seen == [run.id]


def test_create_durably_accepts_a_dialect_instance(db_url: str) -> None:
    dialect = resolve_dialect(db_url)
    with create_durably(dialect, polling_interval=0.05) as d:
        d.migrate()
        handle = d.register({"send_mail": send_mail})["send_mail"]
        run = handle.trigger({})
        assert d.process_one()
        assert d.get_run(run.id).status == "completed"  # type: ignore[union-attr]


def test_create_durably_accepts_the_documented_options(db_url: str) -> None:
    with create_durably(
        db_url,
        polling_interval=0.5,
        heartbeat_interval=1.0,
        stale_threshold=10.0,
        max_concurrent_runs=4,
    ) as d:
        assert isinstance(d, Durably)
        d.migrate()


@pytest.mark.parametrize(
    "options",
    [
        {"polling_interval": 0},
        {"polling_interval": -1.0},
        {"heartbeat_interval": 0},
        {"stale_threshold": -5},
        {"max_concurrent_runs": 0},
        {"max_concurrent_runs": -1},
        {"max_concurrent_runs": 1.5},
        {"heartbeat_interval": 10.0, "stale_threshold": 5.0},
    ],
)
def test_create_durably_rejects_invalid_options(db_url: str, options: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        d = create_durably(db_url, **options)
        d.close()


def test_two_instances_on_one_database_see_the_same_runs(
    durably: Durably, make_durably: Callable[..., Durably]
) -> None:
    other = make_durably()
    run = durably.register({"send_mail": send_mail})["send_mail"].trigger({})
    other.register({"send_mail": send_mail})
    assert other.get_run(run.id) is not None
    assert other.process_one()
    assert durably.get_run(run.id).status == "completed"  # type: ignore[union-attr]
