"""Every hostile value class, sent to every route and every public method, on every backend.

Asserts what issue 10 promises: never a 500 and never a traceback, SQL, driver name or
bound parameter in a body; a rejected request or call writes nothing and changes
nothing; the Python API raises only `DurablyError`s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from _backends import sqlalchemy_url
from _server_helpers import live_server

from durably import Durably, DurablyError, StepContext, define_job
from durably.server import create_app

# -- the hostile values --------------------------------------------------------------------

#: strings, by class; each goes wherever a string goes (JSON fields, query parameters)
HOSTILE_STRINGS: dict[str, str] = {
    "empty": "",
    "space": " ",
    "nul": "a\x00b",
    "lone-surrogate": "a\ud800b",
    "low-surrogate": "\udfff",
    "control": "\x1b[31mred\r\n\t",
    "long-256": "k" * 256,
    "long-100k": "k" * 100_000,
    "sql": "'; DROP TABLE durably_runs; --",
    "like": "%_%",
    "path": "../../etc/passwd",
    "html": "<script>alert(1)</script>",
    "unicode": "Ordér-1 \u202e\ufeff",
    "emoji": "\U0001f4a5" * 70,
    "digits-5000": "9" * 5000,
    "number-ish": "2147483648",
    "negative": "-1",
    "float": "1e308",
    "almost-ulid": "01ARZ3NDEKTSV4RRFFQ69G5FA",
}
#: JSON values of the wrong type where a string (or an object) belongs
HOSTILE_JSON: dict[str, Any] = {
    "null": None,
    "true": True,
    "zero": 0,
    "big-int": 2**70,
    "float": 1.5,
    "list": ["a"],
    "object": {"a": 1},
    "nested": json.loads("[" * 40 + '"deep"' + "]" * 40),
}
#: query values that only exist on the wire: bytes that are not UTF-8, a raw NUL
RAW_QUERY_VALUES: dict[str, str] = {
    "pct-nul": "a%00b",
    "pct-surrogate": "%ED%A0%80",
    "pct-invalid-utf8": "%FF%FE",
    "pct-overlong": "%C0%AF",
}
LEAKS = ("Traceback", "[SQL:", "[parameters:", "sqlalchemy", "psycopg", "pymysql", "sqlite3.")


@define_job(name="fuzz")
def fuzz_job(step: StepContext, payload: Any) -> Any:
    step.log.info("fuzzing", {"payload": payload})
    return step.run("echo", lambda: payload)


@pytest.fixture
def seeded(make_durably: Callable[..., Durably]) -> Durably:
    """An instance with one run of each final state, so changes to them would show."""
    d = make_durably()
    d.persist_logs = True
    d.register({"fuzz": fuzz_job})
    done = d.jobs.fuzz.trigger({"n": 1})
    d.process_one()
    d.jobs.fuzz.trigger({"n": 2})  # stays pending
    cancelled = d.jobs.fuzz.trigger({"n": 3})
    d.cancel(cancelled.id)
    assert d.get_run(done.id) is not None
    return d


@pytest.fixture
def snapshot(backend_url: str) -> Iterator[Callable[[], Any]]:
    """Everything a rejected request must leave as it was, read with plain SQL."""
    engine = sa.create_engine(sqlalchemy_url(backend_url))

    def read() -> Any:
        with engine.connect() as conn:
            return [
                conn.exec_driver_sql(sql).fetchall()
                for sql in (
                    "SELECT id, status, output, updated_at FROM durably_runs ORDER BY id",
                    "SELECT run_id, payload FROM durably_payloads ORDER BY run_id",
                    "SELECT id, status, output FROM durably_steps ORDER BY id",
                    "SELECT COUNT(*) FROM durably_logs",
                )
            ]

    yield read
    engine.dispose()


def check_body(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    body = response.text
    for leak in LEAKS:
        assert leak not in body, f"{what}: {leak!r} in {body[:500]}"
    if response.status_code >= 400:
        data = response.json()
        assert isinstance(data, dict) and isinstance(data.get("error"), str), what


# -- HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def http(seeded: Durably) -> Iterator[httpx.Client]:
    with live_server(create_app(seeded)) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def trigger_bodies() -> Iterator[tuple[str, bytes]]:
    """(label, raw body) for POST /trigger: each field set to each hostile value."""
    values: dict[str, Any] = {**HOSTILE_STRINGS, **HOSTILE_JSON}
    for field in ("jobName", "idempotencyKey", "concurrencyKey", "input"):
        for label, value in values.items():
            body = {"jobName": "fuzz", "input": {"v": 1}, field: value}
            # ensure_ascii keeps a lone surrogate as the escape "\\ud800" (valid JSON text)
            yield f"{field}={label}", json.dumps(body, ensure_ascii=True).encode()
    yield "input-with-surrogate-key", b'{"jobName":"fuzz","input":{"\\ud800":1}}'
    yield "not-json", b"{jobName: fuzz"
    yield "not-utf8", b'{"jobName":"\xff\xfe"}'
    yield "nan", b'{"jobName":"fuzz","input":{"x":NaN}}'
    yield "array", b"[1,2,3]"
    yield "deep", b'{"jobName":"fuzz","input":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    yield "empty", b""


def query_values() -> Iterator[tuple[str, str]]:
    """(label, already-encoded query value)."""
    for label, value in HOSTILE_STRINGS.items():
        # a URL holds 64 KiB at most (httpx refuses more): long values are cut to 8,000
        # characters; a lone surrogate has no UTF-8 form: its surrogatepass bytes are sent
        yield label, quote(value[:8000].encode("utf-8", "surrogatepass"), safe="")
    yield from RAW_QUERY_VALUES.items()


def test_trigger_never_answers_500_and_a_rejected_body_writes_nothing(
    http: httpx.Client, snapshot: Callable[[], Any]
) -> None:
    for label, body in trigger_bodies():
        before = snapshot()
        response = http.post("/trigger", content=body, headers={"content-type": "application/json"})
        check_body(response, f"POST /trigger {label}")
        if response.status_code != 200:
            assert snapshot() == before, f"POST /trigger {label} wrote something"


ROUTES = [
    ("GET", "/run", "runId"),
    ("GET", "/steps", "runId"),
    ("GET", "/logs", "runId"),
    ("GET", "/runs", "jobName"),
    ("GET", "/runs", "status"),
    ("GET", "/runs", "limit"),
    ("GET", "/runs", "offset"),
    ("POST", "/retry", "runId"),
    ("POST", "/cancel", "runId"),
    ("DELETE", "/run", "runId"),
]


@pytest.mark.parametrize(
    ("method", "path", "name"), ROUTES, ids=[f"{m} {p} {n}" for m, p, n in ROUTES]
)
def test_query_routes_never_answer_500_and_change_nothing_when_rejecting(
    http: httpx.Client, snapshot: Callable[[], Any], method: str, path: str, name: str
) -> None:
    for label, encoded in query_values():
        before = snapshot()
        response = http.request(method, f"{path}?{name}={encoded}")
        check_body(response, f"{method} {path}?{name}={label}")
        if method != "GET":
            assert response.status_code >= 400, f"{method} {path} {label} succeeded"
            assert snapshot() == before, f"{method} {path} {label} changed state"


@pytest.mark.parametrize("path", ["/subscribe?runId=", "/runs/subscribe?jobName="])
def test_streams_reject_hostile_filters_without_a_500(http: httpx.Client, path: str) -> None:
    for label, encoded in query_values():
        with http.stream("GET", path + encoded, timeout=10) as response:
            assert response.status_code < 500, f"{path}{label}: {response.status_code}"
            if response.status_code >= 400:
                response.read()
                check_body(response, f"GET {path}{label}")


# -- the Python API --------------------------------------------------------------------


def python_calls(d: Durably, value: Any) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(label, call) of every public method taking a string, with `value` in that place."""
    job = d.jobs.fuzz
    yield "trigger(idempotency_key)", lambda: job.trigger({}, idempotency_key=value)
    yield "trigger(concurrency_key)", lambda: job.trigger({}, concurrency_key=value)
    yield "trigger(input)", lambda: job.trigger({"v": value})
    yield "trigger(input key)", lambda: job.trigger({value: 1} if isinstance(value, str) else value)
    yield "batch_trigger", lambda: job.batch_trigger([{"v": 1}, {"v": value}])
    for name in ("get_run", "get_steps", "get_logs", "count_steps", "cancel", "retry"):
        yield name, lambda name=name: getattr(d, name)(value)
    yield "delete_run", lambda: d.delete_run(value)
    yield "get_runs(job_name)", lambda: d.get_runs(job_name=value)
    yield "get_runs(job_name list)", lambda: d.get_runs(job_name=["fuzz", value])
    yield "get_runs(status)", lambda: d.get_runs(status=value)
    yield "get_runs(limit)", lambda: d.get_runs(limit=value)
    yield "get_runs(offset)", lambda: d.get_runs(offset=value)
    yield "job.get_run", lambda: job.get_run(value)
    yield "job.get_runs(status)", lambda: job.get_runs(status=value)
    yield "get_job", lambda: d.get_job(value)
    yield "subscribe", lambda: d.subscribe(value).close()


PYTHON_VALUES: dict[str, Any] = {
    **HOSTILE_STRINGS,
    **HOSTILE_JSON,
    "bytes": b"fuzz",
    "huge-int": 2**200,
    "negative-int": -5,
}


def test_public_methods_raise_only_durably_errors_and_write_nothing_when_they_do(
    seeded: Durably, snapshot: Callable[[], Any]
) -> None:
    for label, value in PYTHON_VALUES.items():
        for call_label, call in python_calls(seeded, value):
            before = snapshot()
            try:
                call()
            except DurablyError:
                assert snapshot() == before, f"{call_label} with {label} wrote something"
            except Exception as exc:
                pytest.fail(f"{call_label} with {label}: {type(exc).__name__}: {exc}"[:800])
