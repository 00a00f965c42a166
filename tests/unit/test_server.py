"""The HTTP API (durably.server): JSON routes, error codes, authorize, prefix mounting."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from _server_helpers import (
    Gate,
    add_job,
    anything_job,
    boom_job,
    listener_count,
    live_server,
    open_sse,
    trigger,
    wait_until,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from durably import (
    Durably,
    Progress,
    RunCompleteEvent,
    StepContext,
    StepFailEvent,
    define_job,
)
from durably.server import create_app
from durably.server.wire import dumps, event_json, iso, summary_json

RUN_KEYS = {
    "id",
    "jobName",
    "payload",
    "status",
    "idempotencyKey",
    "concurrencyKey",
    "currentStepIndex",
    "stepCount",
    "progress",
    "output",
    "error",
    "heartbeatAt",
    "createdAt",
    "updatedAt",
    "startedAt",
    "completedAt",
}
STEP_KEYS = {
    "id",
    "runId",
    "name",
    "index",
    "status",
    "output",
    "error",
    "startedAt",
    "completedAt",
}


@pytest.fixture
def d(durably: Durably) -> Durably:
    durably.register({"add": add_job, "boom": boom_job, "anything": anything_job})
    return durably


@pytest.fixture
def client(d: Durably) -> Iterator[httpx.Client]:
    with live_server(create_app(d)) as base, httpx.Client(base_url=base, timeout=20) as c:
        yield c


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1] + "+00:00")


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# -- POST /trigger ----------------------------------------------------------------------


def test_trigger_returns_the_run_id_of_a_new_pending_run(client: httpx.Client, d: Durably) -> None:
    response = client.post("/trigger", json={"jobName": "add", "input": {"a": 1, "b": 2}})
    assert response.status_code == 200
    assert set(response.json()) == {"runId"}
    run = d.get_run(response.json()["runId"])
    assert run is not None
    assert (run.status, run.job_name, run.payload) == ("pending", "add", {"a": 1, "b": 2})


def test_trigger_without_input_stores_an_empty_object(client: httpx.Client, d: Durably) -> None:
    run = d.get_run(trigger(client, "anything"))
    assert run is not None and run.payload == {}
    run = d.get_run(trigger(client, "anything", None, input=None))
    assert run is not None and run.payload == {}


def test_trigger_passes_idempotency_and_concurrency_keys(client: httpx.Client, d: Durably) -> None:
    first = trigger(client, "add", {"a": 1, "b": 1}, idempotencyKey="k1", concurrencyKey="c1")
    again = trigger(client, "add", {"a": 9, "b": 9}, idempotencyKey="k1")
    assert again == first
    body = client.get("/run", params={"runId": first}).json()
    assert (body["idempotencyKey"], body["concurrencyKey"]) == ("k1", "c1")
    assert body["payload"] == {"a": 1, "b": 1}


def test_trigger_of_an_unknown_job_is_404(client: httpx.Client, d: Durably) -> None:
    message = assert_error(client.post("/trigger", json={"jobName": "nope", "input": {}}), 404)
    assert message == "Job not found: nope"  # 0.6's text
    assert d.get_runs() == []


def test_trigger_with_input_failing_validation_is_400_and_writes_nothing(
    client: httpx.Client, d: Durably
) -> None:
    response = client.post("/trigger", json={"jobName": "add", "input": {"a": "x"}})
    message = assert_error(response, 400)
    assert "add" in message
    assert d.get_runs() == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "empty body"),
        (b"   ", "blank body"),
        (b"{", "malformed JSON"),
        (b"{'jobName': 'add'}", "single quotes"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "an array"),
        (b'"add"', "a string"),
        (b"null", "null"),
        (b"{}", "no jobName"),
        (b'{"jobName": ""}', "empty jobName"),
        (b'{"jobName": null}', "null jobName"),
        (b'{"jobName": 5}', "jobName a number"),
        (b'{"jobName": ["add"]}', "jobName a list"),
        (b'{"jobName": "add", "input": {"a": 1, "b": 2}, "idempotencyKey": 5}', "key a number"),
        (b'{"jobName": "add", "input": {"a": 1, "b": 2}, "idempotencyKey": ""}', "empty key"),
        (b'{"jobName": "add", "input": {"a": 1, "b": 2}, "concurrencyKey": {}}', "key an object"),
        (b'{"jobName": "add", "input": [1, 2]}', "input of the wrong type"),
        (b'{"jobName": "add", "input": {"a": NaN, "b": 1}}', "NaN is not JSON"),
        (b'{"jobName": "anything", "input": Infinity}', "Infinity is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
    ],
)
def test_trigger_with_a_bad_body_is_400(
    client: httpx.Client, d: Durably, body: bytes, why: str
) -> None:
    response = client.post("/trigger", content=body, headers={"content-type": "application/json"})
    assert_error(response, 400)
    assert d.get_runs() == [], why


# -- GET /run, /runs, /steps ------------------------------------------------------------


def test_run_has_the_wire_shape_with_step_count_and_utc_times(
    client: httpx.Client, d: Durably
) -> None:
    run_id = trigger(client, "add", {"a": 2, "b": 3}, idempotencyKey="idem")
    pending = client.get("/run", params={"runId": run_id}).json()
    assert set(pending) == RUN_KEYS
    assert pending["status"] == "pending"
    assert (pending["stepCount"], pending["progress"], pending["startedAt"]) == (0, None, None)

    d.process_until_idle()
    response = client.get("/run", params={"runId": run_id})
    assert response.status_code == 200
    body = response.json()
    run = d.get_run(run_id)
    assert run is not None
    assert set(body) == RUN_KEYS
    assert body["id"] == run_id
    assert body["jobName"] == "add"
    assert body["payload"] == {"a": 2, "b": 3}
    assert body["status"] == "completed"
    assert body["idempotencyKey"] == "idem"
    assert body["concurrencyKey"] is None
    assert body["currentStepIndex"] == run.current_step_index
    assert body["stepCount"] == 2
    assert body["progress"] == {"current": 2}
    assert body["output"] == {"total": 5, "doubled": 10}
    assert body["error"] is None
    for key, value in [
        ("createdAt", run.created_at),
        ("updatedAt", run.updated_at),
        ("startedAt", run.started_at),
        ("completedAt", run.completed_at),
        ("heartbeatAt", run.heartbeat_at),
    ]:
        assert value is not None
        assert parse_time(body[key]) == value, key


def test_run_progress_sends_total_and_message_only_when_set(d: Durably) -> None:
    gate = Gate()

    @define_job(name="progressing")
    def progressing(step: StepContext, payload: Any) -> None:
        step.progress(1, 10, "first")
        gate.pass_through()

    d.register({"progressing": progressing})
    with live_server(create_app(d)) as base, httpx.Client(base_url=base, timeout=20) as client:
        run_id = trigger(client, "progressing")
        d.start()
        assert gate.entered.wait(20)
        body = client.get("/run", params={"runId": run_id}).json()
        assert body["progress"] == {"current": 1, "total": 10, "message": "first"}
        assert body["status"] == "running"
        assert body["heartbeatAt"] is not None
        gate.opened.set()


def test_run_of_an_unknown_id_is_404(client: httpx.Client) -> None:
    assert assert_error(client.get("/run", params={"runId": "nope"}), 404) == "Run not found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/run"),
        ("GET", "/steps"),
        ("GET", "/subscribe"),
        ("POST", "/retry"),
        ("POST", "/cancel"),
        ("DELETE", "/run"),
    ],
)
@pytest.mark.parametrize("query", ["", "?runId=", "?other=1"])
def test_a_missing_run_id_is_400(client: httpx.Client, method: str, path: str, query: str) -> None:
    assert "runId" in assert_error(client.request(method, path + query), 400)


def test_runs_are_newest_first_and_filter_and_page(client: httpx.Client, d: Durably) -> None:
    a1 = trigger(client, "add", {"a": 1, "b": 1})
    b1 = trigger(client, "boom")
    a2 = trigger(client, "add", {"a": 2, "b": 2})
    d.process_until_idle()
    a3 = trigger(client, "add", {"a": 3, "b": 3})

    def ids(**params: Any) -> list[str]:
        response = client.get("/runs", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert all(set(run) == RUN_KEYS for run in body)
        return [run["id"] for run in body]

    assert ids() == [a3, a2, b1, a1]
    assert ids(jobName="add") == [a3, a2, a1]
    assert ids(jobName="boom") == [b1]
    assert ids(jobName="nobody") == []
    assert ids(status="failed") == [b1]
    assert ids(status="pending") == [a3]
    assert ids(jobName="add", status="completed") == [a2, a1]
    assert ids(limit=2) == [a3, a2]
    assert ids(limit=2, offset=1) == [a2, b1]
    assert ids(offset=3) == [a1]
    assert ids(limit=0) == []
    # empty values mean "no filter", as in the original
    assert ids(jobName="", status="", limit="", offset="") == [a3, a2, b1, a1]
    counts = {run["id"]: run["stepCount"] for run in client.get("/runs").json()}
    assert counts == {a3: 0, a2: 2, b1: 1, a1: 2}


@pytest.mark.parametrize(
    "params",
    [
        {"status": "done"},
        {"status": "PENDING"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"limit": " 1"},
        {"limit": "99999999999999999999999999"},
        {"offset": "-5"},
        {"offset": "x"},
    ],
)
def test_runs_with_a_bad_query_value_is_400(client: httpx.Client, params: dict[str, str]) -> None:
    assert_error(client.get("/runs", params=params), 400)


def test_steps_are_in_index_order_with_the_wire_shape(client: httpx.Client, d: Durably) -> None:
    ok = trigger(client, "add", {"a": 1, "b": 2})
    bad = trigger(client, "boom")
    d.process_until_idle()

    steps = client.get("/steps", params={"runId": ok}).json()
    assert [s["name"] for s in steps] == ["sum", "double"]
    assert [s["index"] for s in steps] == [0, 1]
    assert [s["output"] for s in steps] == [3, 6]
    for step, record in zip(steps, d.get_steps(ok), strict=True):
        assert set(step) == STEP_KEYS
        assert step["id"] == record.id and step["runId"] == ok
        assert step["status"] == "completed" and step["error"] is None
        assert parse_time(step["startedAt"]) == record.started_at
        assert parse_time(step["completedAt"]) == record.completed_at

    (failed,) = client.get("/steps", params={"runId": bad}).json()
    assert (failed["name"], failed["status"]) == ("explode", "failed")
    assert "ZeroDivisionError" in failed["error"]


def test_steps_of_an_unknown_run_are_an_empty_list(client: httpx.Client) -> None:
    response = client.get("/steps", params={"runId": "nope"})
    assert (response.status_code, response.json()) == (200, [])


# -- POST /retry, POST /cancel, DELETE /run ---------------------------------------------


def test_retry_puts_a_failed_run_back_to_pending(client: httpx.Client, d: Durably) -> None:
    run_id = trigger(client, "boom")
    d.process_until_idle()
    response = client.post("/retry", params={"runId": run_id})
    assert (response.status_code, response.json()) == (200, {"success": True})
    run = d.get_run(run_id)
    assert run is not None and run.status == "pending"


def test_retry_of_a_pending_or_completed_run_is_409(client: httpx.Client, d: Durably) -> None:
    pending = trigger(client, "add", {"a": 1, "b": 1})
    assert "pending" in assert_error(client.post("/retry", params={"runId": pending}), 409)
    d.process_until_idle()
    assert "completed" in assert_error(client.post("/retry", params={"runId": pending}), 409)


def test_cancel_cancels_a_pending_run(client: httpx.Client, d: Durably) -> None:
    run_id = trigger(client, "add", {"a": 1, "b": 1})
    response = client.post("/cancel", params={"runId": run_id})
    assert (response.status_code, response.json()) == (200, {"success": True})
    run = d.get_run(run_id)
    assert run is not None and run.status == "cancelled"
    assert_error(client.post("/cancel", params={"runId": run_id}), 409)


def test_delete_removes_a_terminal_run_and_refuses_a_pending_one(
    client: httpx.Client, d: Durably
) -> None:
    run_id = trigger(client, "add", {"a": 1, "b": 1})
    assert_error(client.delete("/run", params={"runId": run_id}), 409)
    d.process_until_idle()
    response = client.delete("/run", params={"runId": run_id})
    assert (response.status_code, response.json()) == (200, {"success": True})
    assert d.get_run(run_id) is None
    assert_error(client.get("/run", params={"runId": run_id}), 404)


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/retry"), ("POST", "/cancel"), ("DELETE", "/run")]
)
def test_state_changes_of_an_unknown_run_are_404(
    client: httpx.Client, method: str, path: str
) -> None:
    response = client.request(method, path, params={"runId": "ghost"})
    assert assert_error(response, 404) == "Run not found"


# -- routing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/"),
        ("GET", "/nope"),
        ("GET", "/trigger"),
        ("PUT", "/trigger"),
        ("POST", "/runs"),
        ("PUT", "/run"),
        ("PATCH", "/run"),
        ("POST", "/run"),
        ("GET", "/retry"),
        ("DELETE", "/cancel"),
        ("POST", "/subscribe"),
        ("OPTIONS", "/runs"),
        ("FOO", "/runs"),
        ("GET", "/runs/"),
        ("GET", "/runs/subscribe/"),
        ("GET", "/runs/other"),
        ("GET", "/api/durably/runs"),
    ],
)
def test_unknown_methods_and_paths_are_404_never_405(
    client: httpx.Client, method: str, path: str
) -> None:
    assert_error(client.request(method, path), 404)


def test_head_is_not_a_route(client: httpx.Client) -> None:
    assert client.head("/runs").status_code == 404


# -- authorize --------------------------------------------------------------------------

ALL_ROUTES = [
    ("POST", "/trigger"),
    ("GET", "/run"),
    ("GET", "/runs"),
    ("GET", "/steps"),
    ("GET", "/subscribe"),
    ("GET", "/runs/subscribe"),
    ("POST", "/retry"),
    ("POST", "/cancel"),
    ("DELETE", "/run"),
]


def _sync_authorize(request: Request) -> bool:
    return request.headers.get("authorization") == "Bearer let-me-in"


async def _async_authorize(request: Request) -> bool:
    return request.headers.get("authorization") == "Bearer let-me-in"


@pytest.mark.parametrize("authorize", [_sync_authorize, _async_authorize], ids=["sync", "async"])
def test_authorize_returning_false_is_401_on_every_route(
    d: Durably, authorize: Callable[[Request], Any]
) -> None:
    run_id = d.jobs["add"].trigger({"a": 1, "b": 1}).id
    before = listener_count(d)
    with (
        live_server(create_app(d, authorize=authorize)) as base,
        httpx.Client(base_url=base, timeout=20) as client,
    ):
        for method, path in ALL_ROUTES:
            params = {} if path in ("/trigger", "/runs", "/runs/subscribe") else {"runId": run_id}
            body = {"jobName": "add", "input": {"a": 1, "b": 1}} if path == "/trigger" else None
            denied = client.request(method, path, params=params, json=body)
            assert_error(denied, 401)
        assert listener_count(d) == before
        assert [r.id for r in d.get_runs()] == [run_id]
        assert_error(client.get("/nope"), 401)

        allowed = client.get("/runs", headers={"authorization": "Bearer let-me-in"})
        assert allowed.status_code == 200 and [r["id"] for r in allowed.json()] == [run_id]
        client.headers["authorization"] = "Bearer let-me-in"
        with open_sse(client, "/subscribe", runId=run_id) as stream:
            d.start()
            assert stream.until("run:complete")[-1]["runId"] == run_id
        with open_sse(client, "/runs/subscribe"):
            pass
        assert client.post(
            "/trigger", json={"jobName": "add", "input": {"a": 1, "b": 1}}
        ).is_success


def test_authorize_gets_the_starlette_request(d: Durably) -> None:
    seen: list[tuple[str, str, str | None]] = []

    def authorize(request: Request) -> bool:
        assert isinstance(request, Request)
        seen.append((request.method, request.url.path, request.query_params.get("runId")))
        return True

    with (
        live_server(create_app(d, authorize=authorize)) as base,
        httpx.Client(base_url=base, timeout=20) as client,
    ):
        assert client.get("/run", params={"runId": "r1"}).status_code == 404
    assert seen == [("GET", "/run", "r1")]


def test_authorize_may_read_the_body_before_the_route_does(d: Durably) -> None:
    async def authorize(request: Request) -> bool:
        body = await request.json()
        return bool(body.get("jobName") == "add")

    with (
        live_server(create_app(d, authorize=authorize)) as base,
        httpx.Client(base_url=base, timeout=20) as client,
    ):
        assert trigger(client, "add", {"a": 1, "b": 1})
        denied = client.post("/trigger", json={"jobName": "boom"})
        assert_error(denied, 401)


# -- mounting under a prefix ------------------------------------------------------------


def _exercise_prefix(base: str, d: Durably, prefix: str) -> None:
    with httpx.Client(base_url=base + prefix, timeout=20) as client:
        run_id = trigger(client, "add", {"a": 4, "b": 5})
        assert client.get("/run", params={"runId": run_id}).json()["id"] == run_id
        assert [r["id"] for r in client.get("/runs").json()] == [run_id]
        assert_error(client.get("/nope"), 404)
        assert_error(client.put("/run"), 404)
        with open_sse(client, "/subscribe", runId=run_id) as stream:
            d.start()
            events = stream.until("run:complete")
            assert events[-1]["output"] == {"total": 9, "doubled": 18}
            assert stream.rest() == []
        with open_sse(client, "/runs/subscribe", jobName="add") as stream:
            second = trigger(client, "add", {"a": 1, "b": 1})
            assert stream.until("run:complete")[-1]["runId"] == second


def test_mounting_under_a_prefix_in_starlette(d: Durably) -> None:
    outer = Starlette(routes=[Mount("/api/durably", app=create_app(d))])
    with live_server(outer) as base:
        _exercise_prefix(base, d, "/api/durably")


def test_mounting_under_a_prefix_in_fastapi(d: Durably) -> None:
    fastapi = pytest.importorskip("fastapi", reason="fastapi is not installed")
    outer = fastapi.FastAPI()
    outer.mount("/api/durably", create_app(d))
    with live_server(outer) as base:
        _exercise_prefix(base, d, "/api/durably")


# -- the wire format, unit by unit ------------------------------------------------------

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)


def test_times_are_iso_utc_with_a_z() -> None:
    assert iso(T0) == "2024-05-06T07:08:09.123456Z"
    assert iso(T0.replace(microsecond=0)) == "2024-05-06T07:08:09.000000Z"
    assert iso(None) is None


def test_event_fields_are_camel_case_and_durations_are_milliseconds() -> None:
    event = RunCompleteEvent(
        type="run:complete",
        timestamp=T0,
        sequence=7,
        run_id="r",
        job_name="j",
        output={"snake_key": 1},
        duration=1.5,
    )
    assert event_json(event) == {
        "type": "run:complete",
        "timestamp": "2024-05-06T07:08:09.123456Z",
        "sequence": 7,
        "runId": "r",
        "jobName": "j",
        "output": {"snake_key": 1},
        "duration": 1500,
    }


def test_step_summary_of_a_failure_carries_the_error() -> None:
    event = StepFailEvent(
        type="step:fail",
        timestamp=T0,
        sequence=1,
        run_id="r",
        job_name="j",
        step_name="s",
        step_index=3,
        error="ValueError: x",
    )
    assert summary_json(event) == {
        "type": "step:fail",
        "runId": "r",
        "jobName": "j",
        "stepName": "s",
        "stepIndex": 3,
        "error": "ValueError: x",
    }
    assert event_json(event)["stepIndex"] == 3


def test_json_is_compact_and_valid_whatever_the_values() -> None:
    assert dumps({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'
    assert dumps({"x": math.nan, "y": [math.inf]}) == '{"x":null,"y":[null]}'
    assert dumps({"p": Progress(1, 2, None), "s": {3}}) == (
        '{"p":{"current":1,"total":2,"message":null},"s":[3]}'
    )


def test_the_core_does_not_import_the_server() -> None:
    code = (
        "import sys, durably; "
        "assert 'durably.server' not in sys.modules; assert 'starlette' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_listener_is_left_after_plain_requests(client: httpx.Client, d: Durably) -> None:
    before = listener_count(d)
    run_id = trigger(client, "add", {"a": 1, "b": 1})
    client.get("/run", params={"runId": run_id})
    client.get("/subscribe", params={"runId": "unknown"})
    wait_until(lambda: listener_count(d) == before)


def test_non_finite_numbers_in_stored_values_are_sent_as_null(d: Durably) -> None:
    @define_job(name="non-finite")
    def non_finite(step: StepContext, payload: Any) -> dict[str, float]:
        step.run("nan", lambda: math.nan)
        return {"x": math.inf}

    d.register({"non-finite": non_finite})
    with live_server(create_app(d)) as base, httpx.Client(base_url=base, timeout=20) as client:
        run_id = trigger(client, "non-finite")
        d.process_until_idle()
        run = client.get("/run", params={"runId": run_id})
        assert (run.status_code, run.json()["output"]) == (200, {"x": None})
        assert client.get("/steps", params={"runId": run_id}).json()[0]["output"] is None
        with open_sse(client, "/subscribe", runId=run_id) as stream:
            assert stream.until("run:complete")[-1]["output"] == {"x": None}
