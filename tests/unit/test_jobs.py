"""define_job: both forms, input types pydantic accepts, output validation."""

from __future__ import annotations

import dataclasses
from typing import Any

from _api_helpers import Recorder
from pydantic import BaseModel
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from durably import Durably, JobDefinition, StepContext, define_job


class UserIn(BaseModel):
    org_id: str
    limit: int = 10


class SyncOut(BaseModel):
    synced: int


@dataclasses.dataclass
class PointIn:
    x: int
    y: int


class MovieIn(TypedDict):
    title: str
    year: int


def test_decorator_form_returns_a_job_definition_with_its_name() -> None:
    @define_job(name="sync-users", input=UserIn, output=SyncOut)
    def sync_users(step: StepContext, payload: UserIn) -> SyncOut:
        return SyncOut(synced=payload.limit)

    assert isinstance(sync_users, JobDefinition)
    assert sync_users.name == "sync-users"


def test_functional_form_with_run_defines_the_same_kind_of_job(durably: Durably) -> None:
    def fn(step: StepContext, payload: UserIn) -> SyncOut:
        return SyncOut(synced=payload.limit)

    job = define_job(name="sync-functional", input=UserIn, output=SyncOut, run=fn)
    assert isinstance(job, JobDefinition)
    assert job.name == "sync-functional"

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({"org_id": "o1", "limit": 3})
    assert durably.process_one()
    stored = durably.get_run(run.id)
    assert stored is not None and stored.status == "completed"
    assert stored.output == {"synced": 3}


def test_base_model_input_is_handed_to_the_function_as_a_validated_model(durably: Durably) -> None:
    seen: list[Any] = []

    @define_job(name="model-in", input=UserIn)
    def job(step: StepContext, payload: UserIn) -> None:
        seen.append(payload)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({"org_id": "acme", "limit": "5"})
    # stored as the JSON form of the validated value: "5" was coerced to 5
    assert run.payload == {"org_id": "acme", "limit": 5}
    assert durably.process_one()
    assert seen == [UserIn(org_id="acme", limit=5)]
    assert isinstance(seen[0], UserIn)


def test_model_instance_input_is_accepted_and_stored_as_json(durably: Durably) -> None:
    @define_job(name="model-instance-in", input=UserIn)
    def job(step: StepContext, payload: UserIn) -> None:
        return None

    handle = durably.register({"job": job})["job"]
    run = handle.trigger(UserIn(org_id="x"))
    assert run.payload == {"org_id": "x", "limit": 10}
    stored = durably.get_run(run.id)
    assert stored is not None and stored.payload == {"org_id": "x", "limit": 10}


def test_dataclass_input_is_handed_to_the_function_as_the_dataclass(durably: Durably) -> None:
    seen: list[Any] = []

    @define_job(name="dataclass-in", input=PointIn)
    def job(step: StepContext, payload: PointIn) -> int:
        seen.append(payload)
        return payload.x + payload.y

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({"x": 1, "y": "2"})
    assert run.payload == {"x": 1, "y": 2}
    assert durably.process_one()
    assert seen == [PointIn(1, 2)]
    stored = durably.get_run(run.id)
    assert stored is not None and stored.output == 3


def test_typed_dict_input_is_validated_and_handed_over_as_a_dict(durably: Durably) -> None:
    seen: list[Any] = []

    @define_job(name="typeddict-in", input=MovieIn)
    def job(step: StepContext, payload: MovieIn) -> None:
        seen.append(payload)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({"title": "Heat", "year": "1995"})
    assert run.payload == {"title": "Heat", "year": 1995}
    assert durably.process_one()
    assert seen == [{"title": "Heat", "year": 1995}]


def test_dict_of_str_to_int_input_is_validated_and_coerced(durably: Durably) -> None:
    seen: list[Any] = []

    @define_job(name="mapping-in", input=dict[str, int])
    def job(step: StepContext, payload: dict[str, int]) -> int:
        seen.append(payload)
        return sum(payload.values())

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({"a": 1, "b": "2"})
    assert run.payload == {"a": 1, "b": 2}
    assert durably.process_one()
    assert seen == [{"a": 1, "b": 2}]
    stored = durably.get_run(run.id)
    assert stored is not None and stored.output == 3


def test_output_is_validated_into_the_output_type_and_stored_as_json(durably: Durably) -> None:
    @define_job(name="dict-out", input=UserIn, output=SyncOut)
    def job(step: StepContext, payload: UserIn) -> Any:
        # a dict that validates into SyncOut ("7" is coerced)
        return {"synced": "7"}

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({"org_id": "o"})
    assert durably.process_one()
    stored = durably.get_run(run.id)
    assert stored is not None and stored.status == "completed"
    assert stored.output == {"synced": 7}
    typed = handle.get_run(run.id)
    assert typed is not None and typed.output == SyncOut(synced=7)


def test_invalid_output_fails_the_run(durably: Durably) -> None:
    events = Recorder(durably)

    @define_job(name="bad-out", input=UserIn, output=SyncOut)
    def job(step: StepContext, payload: UserIn) -> Any:
        return {"synced": "not a number"}

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({"org_id": "o"})
    assert durably.process_one()
    stored = durably.get_run(run.id)
    assert stored is not None and stored.status == "failed"
    assert stored.error and "synced" in stored.error
    assert stored.output is None
    assert [e.type for e in events.of(run_id=run.id)][-1] == "run:fail"
    assert events.of("run:complete") == []


def test_an_output_that_cannot_be_stored_as_json_fails_the_run(durably: Durably) -> None:
    @define_job(name="opaque-out")
    def job(step: StepContext, payload: Any) -> Any:
        return object()

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    stored = durably.get_run(run.id)
    assert stored is not None and stored.status == "failed"
    assert stored.error and "object" in stored.error


def test_job_without_output_type_stores_any_json_value(durably: Durably) -> None:
    @define_job(name="free-out")
    def job(step: StepContext, payload: Any) -> Any:
        return {"items": [1, "two", None], "ok": True}

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({"anything": ["goes"]})
    assert run.payload == {"anything": ["goes"]}
    assert durably.process_one()
    stored = durably.get_run(run.id)
    assert stored is not None and stored.output == {"items": [1, "two", None], "ok": True}


def test_job_returning_none_completes_with_null_output(durably: Durably) -> None:
    @define_job(name="none-out")
    def job(step: StepContext, payload: Any) -> None:
        return None

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    stored = durably.get_run(run.id)
    assert stored is not None and stored.status == "completed" and stored.output is None


def test_exception_in_the_job_body_fails_the_run_with_type_and_message(durably: Durably) -> None:
    @define_job(name="divide")
    def job(step: StepContext, payload: Any) -> float:
        return 1 / 0

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    stored = durably.get_run(run.id)
    assert stored is not None and stored.status == "failed"
    assert stored.error == "ZeroDivisionError: division by zero"
