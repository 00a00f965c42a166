"""The HTTP API under hostile input and exposed to browsers on other origins.

A 500 carries only an error id (the detail goes to the log), bad query numbers are 400,
request bodies are bounded (413), and state-changing routes refuse cross-origin requests
(403) and non-JSON triggers (415), so a page elsewhere cannot act through a logged-in browser.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from _backends import execute_all
from _server_helpers import add_job, anything_job, boom_job, live_server
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request

from durably import (
    Durably,
)
from durably.server import create_app


@pytest.fixture
def d(durably: Durably) -> Durably:
    durably.register({"add": add_job, "boom": boom_job, "anything": anything_job})
    return durably


@pytest.fixture
def client(d: Durably) -> Iterator[httpx.Client]:
    with live_server(create_app(d)) as base, httpx.Client(base_url=base, timeout=20) as c:
        yield c


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# -- 500: only an error id ----------------------------------------------------------------


def test_unexpected_store_failure_answers_a_generic_500_whose_id_is_in_the_log(
    d: Durably, backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = d.jobs["add"].trigger({"a": 1, "b": 2}).id
    caplog.set_level(logging.ERROR, logger="durably.server")
    # a real failure under the app: the steps table disappears, so counting steps fails
    execute_all(backend_url, ["ALTER TABLE durably_steps RENAME TO durably_steps_gone"])
    try:
        with live_server(create_app(d)) as base, httpx.Client(base_url=base, timeout=20) as c:
            responses = [c.get("/runs"), c.get("/run", params={"runId": run_id})]
    finally:
        execute_all(backend_url, ["ALTER TABLE durably_steps_gone RENAME TO durably_steps"])

    ids = []
    for response in responses:
        assert response.status_code == 500, response.text
        body = response.json()
        assert set(body) == {"error", "errorId"}
        assert body["error"] == "internal error"
        assert re.fullmatch(r"[0-9a-f]{12}", body["errorId"]), body
        for leak in ("SQL", "durably_steps", "parameters", run_id, "Traceback", "Error:"):
            assert leak not in response.text, (leak, response.text)
        ids.append(body["errorId"])
    assert ids[0] != ids[1]

    for error_id in ids:
        records = [r for r in caplog.records if error_id in r.getMessage()]
        assert len(records) == 1, [r.getMessage() for r in caplog.records]
        (record,) = records
        assert record.name == "durably.server" and record.levelno == logging.ERROR
        assert record.exc_info is not None  # logger.exception: the detail is in the log
        logged = record.exc_info[1]
        # a StoreError whose cause is the driver's error naming the table
        assert "durably_steps" in f"{logged} {logged.__cause__}"


def test_authorize_hook_that_raises_answers_the_generic_500(
    d: Durably, caplog: pytest.LogCaptureFixture
) -> None:
    def authorize(request: Request) -> bool:
        raise RuntimeError("session store password=hunter2 unreachable")

    caplog.set_level(logging.ERROR, logger="durably.server")
    with (
        live_server(create_app(d, authorize=authorize)) as base,
        httpx.Client(base_url=base, timeout=20) as client,
    ):
        response = client.get("/runs")
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal error" and "hunter2" not in response.text
    assert any(body["errorId"] in r.getMessage() for r in caplog.records)


# -- 400 for bad query numbers --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "9" * 5000,  # past Python's int() digit limit (a ValueError inside int())
        "1" + "0" * 4300,
        str(2**63),  # no backend binds it
        str(2**64),
        "-1",
        "1.5",
        "1e3",
        "0x10",
        "abc",
        " 1",
        "1 ",
        "+1",
        "\u0663",  # ARABIC-INDIC DIGIT THREE: int() accepts it, the API does not
    ],
)
@pytest.mark.parametrize("name", ["limit", "offset"])
def test_limit_and_offset_that_are_not_small_non_negative_integers_are_400(
    client: httpx.Client, name: str, value: str
) -> None:
    message = assert_error(client.get("/runs", params={name: value}), 400)
    assert name in message and "non-negative integer" in message
    assert len(message) < 300  # the message does not echo 5,000 digits


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "2147483648"},
        {"limit": str(2**63 - 1)},
        {"offset": "2147483648"},
        {"limit": str(2**63 - 1), "offset": str(2**63 - 1)},
        {"limit": "00000000000000000000000001"},
        {"limit": "0" * 5000 + "1"},  # leading zeros count in int()'s digit limit too
    ],
)
def test_huge_but_valid_limit_and_offset_are_answered_on_every_backend(
    client: httpx.Client, d: Durably, params: dict[str, str]
) -> None:
    run_id = d.jobs["add"].trigger({"a": 1, "b": 2}).id
    response = client.get("/runs", params=params)
    assert response.status_code == 200, response.text
    expected = [] if "offset" in params else [run_id]
    assert [run["id"] for run in response.json()] == expected


# -- 413: bounded request bodies ----------------------------------------------------------


def _padded_trigger(size: int) -> bytes:
    """A valid trigger body of exactly `size` bytes (JSON whitespace as padding)."""
    body = json.dumps({"jobName": "anything", "input": {"k": "v"}}).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def test_create_app_body_limit_is_keyword_only_and_10_mib_by_default() -> None:
    parameter = inspect.signature(create_app).parameters["max_body_bytes"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
    assert parameter.default == 10 * 1024 * 1024


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10"])
def test_create_app_refuses_a_body_limit_that_is_not_a_positive_integer(
    d: Durably, bad: Any
) -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(d, max_body_bytes=bad)


def _raw_request(base: str, head: str, timeout: float = 20) -> bytes:
    """Send only a request head on a raw socket; return what the server answers."""
    parts = urlsplit(base)
    assert parts.hostname and parts.port
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _complete(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length: *(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


@pytest.mark.parametrize("limit", [None, 1000])
def test_body_announced_over_the_limit_is_413_before_the_body_is_sent(
    d: Durably, limit: int | None
) -> None:
    options = {} if limit is None else {"max_body_bytes": limit}
    declared = (limit or 10 * 1024 * 1024) + 1
    with live_server(create_app(d, **options)) as base:
        raw = _raw_request(
            base,
            "POST /trigger HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n",
        )
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), raw[:300]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert set(body) == {"error"} and str(declared) in body["error"]
    assert d.get_runs() == []


def test_body_at_the_limit_is_accepted_and_one_byte_more_is_413(d: Durably) -> None:
    with (
        live_server(create_app(d, max_body_bytes=1000)) as base,
        httpx.Client(base_url=base, timeout=20) as client,
    ):
        headers = {"content-type": "application/json"}
        accepted = client.post("/trigger", content=_padded_trigger(1000), headers=headers)
        assert accepted.status_code == 200, accepted.text
        assert_error(client.post("/trigger", content=_padded_trigger(1001), headers=headers), 413)
    assert [run.id for run in d.get_runs()] == [accepted.json()["runId"]]


def test_chunked_body_without_content_length_is_counted_while_it_streams(d: Durably) -> None:
    def chunks() -> Iterator[bytes]:
        body = _padded_trigger(4000)
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    with (
        live_server(create_app(d, max_body_bytes=1000)) as base,
        httpx.Client(base_url=base, timeout=20) as client,
    ):
        response = client.post(
            "/trigger", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        message = assert_error(response, 413)
        assert "1000" in message
    assert d.get_runs() == []


def _asgi_post(app: Any, path: str, receive: Callable[[], Any]) -> list[dict[str, Any]]:
    """Call the ASGI app directly with a body that `receive` produces; the messages sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.parametrize("reader", ["route", "authorize"])
def test_endless_body_is_not_read_past_the_limit(d: Durably, reader: str) -> None:
    received = 0

    async def endless() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b" " * 1024, "more_body": True}

    async def reads_the_body(request: Request) -> bool:
        await request.body()
        return True

    authorize = reads_the_body if reader == "authorize" else None
    app = create_app(d, authorize=authorize, max_body_bytes=64 * 1024)
    sent = _asgi_post(app, "/trigger", endless)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert "error" in json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert received <= 64 + 1
    assert d.get_runs() == []


def test_input_over_the_instances_max_payload_bytes_is_413(
    make_durably: Callable[..., Durably],
) -> None:
    d = make_durably(max_payload_bytes=1000)
    d.register({"anything": anything_job})
    with (
        live_server(create_app(d)) as base,
        httpx.Client(base_url=base, timeout=20) as client,
    ):
        big = {"jobName": "anything", "input": {"blob": "x" * 2000}}
        assert_error(client.post("/trigger", json=big), 413)
        assert d.get_runs() == []
        small = client.post("/trigger", json={"jobName": "anything", "input": {"blob": "x"}})
        assert small.status_code == 200, small.text


# -- CSRF: state-changing routes refuse other origins -------------------------------------


class Runs:
    """A failed run (retry and delete would act on it) and a pending one (cancel would)."""

    def __init__(self, d: Durably) -> None:
        self.d = d
        self.failed = d.jobs["boom"].trigger({}).id
        d.process_until_idle()
        self.pending = d.jobs["add"].trigger({"a": 1, "b": 2}).id

    def state(self) -> list[tuple[str, str]]:
        return sorted((run.id, run.status) for run in self.d.get_runs())

    def attempts(self, client: httpx.Client, headers: dict[str, str]) -> list[httpx.Response]:
        body = {"jobName": "add", "input": {"a": 5, "b": 5}}
        return [
            client.post("/trigger", json=body, headers=headers),
            client.post("/retry", params={"runId": self.failed}, headers=headers),
            client.post("/cancel", params={"runId": self.pending}, headers=headers),
            client.delete("/run", params={"runId": self.failed}, headers=headers),
        ]


def _own_origin(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


@pytest.mark.parametrize(
    "hostile",
    [
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"sec-fetch-site": "cross-site", "origin": "OWN"},
        {"origin": "http://evil.example"},
        {"origin": "null"},  # a sandboxed frame or a file: page
        {"origin": "OTHER-PORT"},
        {"origin": "OTHER-SCHEME"},
        {"origin": "http://evil.example", "sec-fetch-site": "same-site"},
        {"origin": "http://["},  # not even a URL
        {"origin": "http://127.0.0.1:99999"},
        {"origin": "http://user@127.0.0.1"},
        {"origin": "OWN/path"},
    ],
    ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()),
)
def test_state_changing_routes_refuse_requests_from_another_origin(
    client: httpx.Client, d: Durably, hostile: dict[str, str]
) -> None:
    runs = Runs(d)
    before = runs.state()
    own = urlsplit(_own_origin(client))
    replacements = {
        "OTHER-PORT": f"http://{own.hostname}:{(own.port or 80) + 1}",
        "OTHER-SCHEME": f"https://{own.netloc}",
    }
    headers = {
        k: replacements.get(v, v).replace("OWN", _own_origin(client)) for k, v in hostile.items()
    }
    for response in runs.attempts(client, headers):
        assert "origin" in assert_error(response, 403)
    assert runs.state() == before


@pytest.mark.parametrize(
    "friendly",
    [
        {},  # curl, Python clients: no Origin, no Sec-Fetch-*
        {"origin": "OWN"},
        {"origin": "OWN", "sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "none"},
    ],
    ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "no-headers",
)
def test_state_changing_routes_accept_same_origin_and_non_browser_requests(
    client: httpx.Client, d: Durably, friendly: dict[str, str]
) -> None:
    runs = Runs(d)
    headers = {k: _own_origin(client) if v == "OWN" else v for k, v in friendly.items()}
    trigger, retry, cancel, delete = runs.attempts(client, headers)
    assert (trigger.status_code, retry.status_code, cancel.status_code) == (200, 200, 200)
    assert delete.status_code == 409  # the retried run is pending again: a state error
    statuses = dict(runs.state())
    assert statuses[runs.failed] == "pending" and statuses[runs.pending] == "cancelled"
    assert statuses[trigger.json()["runId"]] == "pending"


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("durably.example", "http://durably.example"),
        ("durably.example:8443", "http://durably.example:8443"),
        ("durably.example:80", "http://durably.example"),
        ("durably.example", "http://durably.example:80"),
        ("Durably.Example", "HTTP://durably.EXAMPLE"),
        ("[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_origin_is_compared_with_the_host_the_request_was_sent_to(
    client: httpx.Client, d: Durably, host: str, origin: str
) -> None:
    run_id = d.jobs["add"].trigger({"a": 1, "b": 2}).id
    response = client.post(
        "/cancel", params={"runId": run_id}, headers={"host": host, "origin": origin}
    )
    assert response.status_code == 200, response.text
    elsewhere = d.jobs["add"].trigger({"a": 1, "b": 2}).id
    spoofed = {"host": host, "origin": "http://evil.example"}
    assert_error(client.post("/cancel", params={"runId": elsewhere}, headers=spoofed), 403)


def test_browser_attested_same_origin_is_trusted_behind_a_proxy_that_rewrites_host(
    client: httpx.Client, d: Durably
) -> None:
    """A TLS proxy may pass `Host: backend:8000` over http for a page at https://public;
    the browser's own Sec-Fetch-Site (a header no page can set) still says same-origin."""
    run_id = d.jobs["add"].trigger({"a": 1, "b": 2}).id
    headers = {
        "host": "backend:8000",
        "origin": "https://public.example",
        "sec-fetch-site": "same-origin",
    }
    assert client.post("/cancel", params={"runId": run_id}, headers=headers).status_code == 200


def test_trusted_origins_may_act_from_another_origin(d: Durably) -> None:
    runs = Runs(d)
    app = create_app(d, trusted_origins=["https://dash.example", "http://localhost:5173"])
    with live_server(app) as base, httpx.Client(base_url=base, timeout=20) as client:
        for origin in ("https://dash.example", "http://localhost:5173", "HTTPS://DASH.example:443"):
            headers = {"origin": origin, "sec-fetch-site": "cross-site"}
            response = client.post("/trigger", json={"jobName": "anything"}, headers=headers)
            assert response.status_code == 200, (origin, response.text)
        before = runs.state()
        untrusted = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
        for response in runs.attempts(client, untrusted):
            assert_error(response, 403)
        assert runs.state() == before


def test_trusted_origin_with_cors_middleware_is_the_documented_cross_origin_setup(
    d: Durably,
) -> None:
    """The README's recipe: the preflight of a JSON trigger and the trigger itself pass,
    and the browser is allowed to read the answer with credentials."""
    dash = "https://dash.example"
    app = create_app(d, trusted_origins=[dash])
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[dash],
        allow_credentials=True,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["content-type"],
    )
    with live_server(app) as base, httpx.Client(base_url=base, timeout=20) as client:
        preflight = client.options(
            "/trigger",
            headers={
                "origin": dash,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == dash
        headers = {"origin": dash, "sec-fetch-site": "cross-site"}
        response = client.post("/trigger", json={"jobName": "anything"}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == dash
        assert response.headers["access-control-allow-credentials"] == "true"
        evil = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
        assert_error(client.post("/trigger", json={"jobName": "anything"}, headers=evil), 403)
    assert len(d.get_runs()) == 1


@pytest.mark.parametrize(
    "origin",
    [
        "dash.example",
        "http://[",
        "https://dash.example/",
        "https://dash.example/app",
        "ftp://dash.example",
        "*",
        "null",
        "",
    ],
)
def test_create_app_refuses_a_trusted_origin_that_is_not_scheme_host_port(
    d: Durably, origin: str
) -> None:
    with pytest.raises(ValueError, match="trusted_origins"):
        create_app(d, trusted_origins=[origin])


def test_create_app_refuses_a_string_as_trusted_origins(d: Durably) -> None:
    with pytest.raises(ValueError, match="trusted_origins"):
        create_app(d, trusted_origins="https://dash.example")


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",  # what a cross-site <form enctype="text/plain"> sends
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/json",
        "application/jsonp",
    ],
)
def test_trigger_without_a_json_content_type_is_415(
    client: httpx.Client, d: Durably, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    body = json.dumps({"jobName": "add", "input": {"a": 1, "b": 2}}).encode()
    assert "json" in assert_error(client.post("/trigger", content=body, headers=headers), 415)
    assert d.get_runs() == []


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_trigger_with_a_json_content_type_is_accepted(
    client: httpx.Client, content_type: str
) -> None:
    body = json.dumps({"jobName": "add", "input": {"a": 1, "b": 2}}).encode()
    response = client.post("/trigger", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text


def test_reads_are_not_refused_for_their_origin(client: httpx.Client, d: Durably) -> None:
    """A page elsewhere cannot read the answers (no CORS headers); refusing them would
    only break links. `authorize` guards reads."""
    run_id = d.jobs["add"].trigger({"a": 1, "b": 2}).id
    headers = {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}
    assert client.get("/runs", headers=headers).status_code == 200
    assert client.get("/run", params={"runId": run_id}, headers=headers).status_code == 200


def test_origin_check_comes_after_authorize(d: Durably) -> None:
    with (
        live_server(create_app(d, authorize=lambda request: False)) as base,
        httpx.Client(base_url=base, timeout=20) as client,
    ):
        headers = {"origin": "http://evil.example"}
        assert_error(client.post("/cancel", params={"runId": "x"}, headers=headers), 401)
