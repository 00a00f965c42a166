"""The dashboard's HTTP side: the page and its assets, `/logs`, `/jobs`, authorize, prefixes.

What the page does in a browser is tested in tests/browser; here, what the server answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from _server_helpers import AddIn, add_job, anything_job, live_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from durably import Durably, StepContext, create_durably, define_job
from durably.plugins import with_log_persistence
from durably.server import create_app
from durably.server.dashboard import create_dashboard

STATIC = resources.files("durably.server").joinpath("static")
LOG_KEYS = {"id", "runId", "stepName", "level", "message", "data", "createdAt"}


def _static(name: str) -> str:
    return STATIC.joinpath(name).read_text("utf-8")


def _undescribable(step: StepContext, payload: Any) -> None:
    return None


# a callable validates fine, but pydantic has no JSON Schema for it
undescribable_job = define_job(name="callback", input=Callable[[], int], run=_undescribable)


@pytest.fixture
def d(tmp_path: Path) -> Iterator[Durably]:
    """A migrated SQLite Durably with log persistence (worker not started)."""
    durably = create_durably(f"sqlite:///{tmp_path / 'dash.db'}", polling_interval=0.05)
    durably.migrate()
    durably.use(with_log_persistence())
    durably.register({"add": add_job, "anything": anything_job})
    yield durably
    durably.close()


@pytest.fixture
def client(d: Durably) -> Iterator[httpx.Client]:
    with live_server(create_app(d)) as base, httpx.Client(base_url=base, timeout=10) as http:
        yield http


# -- the page and its assets --------------------------------------------------------------


def test_root_serves_the_dashboard_page(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == _static("index.html")
    assert '<script src="_dashboard/app.js" defer></script>' in response.text
    assert '<link rel="stylesheet" href="_dashboard/app.css">' in response.text


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("app.js", "text/javascript; charset=utf-8"), ("app.css", "text/css; charset=utf-8")],
)
def test_assets_are_served_from_the_package_with_their_types(
    client: httpx.Client, name: str, media_type: str
) -> None:
    response = client.get(f"/_dashboard/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.text == _static(name)


@pytest.mark.parametrize("path", ["/", "/_dashboard/app.js", "/_dashboard/app.css"])
def test_page_and_assets_forbid_other_origins_and_sniffing(client: httpx.Client, path: str) -> None:
    headers = client.get(path).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-cache"
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy


def test_page_loads_nothing_from_another_origin_and_uses_relative_urls_only() -> None:
    html = _static("index.html")
    script = _static("app.js")
    css = _static("app.css")
    for text in (html, script, css):
        assert not re.search(r"https?://|//cdn|@import", text), "a URL to another origin"
    # src/href point below the page (assets) or at a hash route, never at the site's root
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert not url.startswith("/"), url
    assert "<script>" not in html and "<style" not in html, "inline code breaks the CSP"


def test_every_element_the_script_looks_up_exists_in_the_page() -> None:
    ids = set(re.findall(r'\bid="([^"]+)"', _static("index.html")))
    wanted = set(re.findall(r'\$\("([^"]+)"\)', _static("app.js")))
    assert wanted, "the script looks nothing up by id?"
    assert wanted - ids == set()


@pytest.mark.parametrize(
    "path",
    [
        "/_dashboard/index.html",  # the page is served at the root only
        "/_dashboard/nope.js",
        "/_dashboard/",
        "/_dashboard/%2E%2E%2Fdashboard.py",
        "/_dashboard/static/app.js",
        "/index.html",
    ],
)
def test_unknown_dashboard_paths_are_404_json(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "not found" in response.json()["error"]


@pytest.mark.parametrize(("method", "path"), [("POST", "/"), ("DELETE", "/_dashboard/app.js")])
def test_other_methods_on_the_dashboard_are_404_not_405(
    client: httpx.Client, method: str, path: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 404
    assert response.json()["error"] == f"not found: {method} {path}"


# -- /jobs and /logs ----------------------------------------------------------------------


def test_jobs_lists_registered_jobs_by_name_with_their_input_schema(
    d: Durably, client: httpx.Client
) -> None:
    d.register({"callback": undescribable_job})
    jobs = client.get("/jobs").json()
    assert [job["name"] for job in jobs] == ["add", "anything", "callback"]
    by_name = {job["name"]: job["inputSchema"] for job in jobs}
    assert by_name["add"] == AddIn.model_json_schema()
    assert by_name["anything"] == {}
    assert by_name["callback"] is None


def test_jobs_is_empty_without_registered_jobs(tmp_path: Path) -> None:
    with create_durably(f"sqlite:///{tmp_path / 'none.db'}") as bare:
        bare.migrate()
        with live_server(create_app(bare)) as base:
            assert httpx.get(base + "/jobs").json() == []


def test_logs_returns_the_persisted_logs_of_a_run_in_camel_case(
    d: Durably, client: httpx.Client
) -> None:
    run = d.jobs["add"].trigger({"a": 1, "b": 2})
    other = d.jobs["add"].trigger({"a": 5, "b": 5})
    assert d.process_until_idle() == 2

    logs = client.get("/logs", params={"runId": run.id}).json()
    assert len(logs) == 1
    (log,) = logs
    assert set(log) == LOG_KEYS
    stored = d.get_logs(run.id)[0]
    assert log == {
        "id": stored.id,
        "runId": run.id,
        "stepName": stored.step_name,
        "level": "info",
        "message": "summed",
        "data": {"total": 3},
        "createdAt": log["createdAt"],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", log["createdAt"])
    assert client.get("/logs", params={"runId": other.id}).json()[0]["data"] == {"total": 10}


def test_logs_of_an_unknown_run_are_empty_and_a_missing_run_id_is_400(
    client: httpx.Client,
) -> None:
    assert client.get("/logs", params={"runId": "nope"}).json() == []
    response = client.get("/logs")
    assert response.status_code == 400
    assert response.json() == {"error": "runId query parameter is required"}


# -- authorize and mounting ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/_dashboard/app.js", "/_dashboard/app.css", "/jobs", "/logs?runId=x"]
)
def test_authorize_guards_the_dashboard_and_its_routes(d: Durably, path: str) -> None:
    seen: list[str] = []

    def authorize(request: Request) -> bool:
        seen.append(request.url.path)
        return request.headers.get("authorization") == "Bearer ok"

    with live_server(create_app(d, authorize=authorize)) as base:
        denied = httpx.get(base + path)
        assert denied.status_code == 401
        assert denied.json() == {"error": "unauthorized"}
        allowed = httpx.get(base + path, headers={"authorization": "Bearer ok"})
        assert allowed.status_code == 200
    assert seen == [path.split("?")[0]] * 2


def test_dashboard_works_under_a_prefix_mount(d: Durably) -> None:
    outer = Starlette(routes=[Mount("/ops/durably", app=create_app(d))])
    with live_server(outer) as base, httpx.Client(base_url=base, timeout=10) as http:
        page = http.get("/ops/durably/")
        assert page.status_code == 200
        assert page.text == _static("index.html")
        # the page's relative URLs resolve under the prefix
        for url in ("_dashboard/app.js", "_dashboard/app.css", "jobs", "runs"):
            assert http.get(str(httpx.URL(base + "/ops/durably/").join(url))).status_code == 200
        # opened without the trailing slash, Starlette sends the browser to the page's folder
        bare = http.get("/ops/durably")
        assert bare.status_code == 307
        assert bare.headers["location"] == base + "/ops/durably/"
        assert http.get("/_dashboard/app.js").status_code == 404


# -- the dashboard apart from the API (the layout of `durably serve`) ----------------------


def test_create_dashboard_points_the_page_at_the_api(d: Durably) -> None:
    outer = Starlette(
        routes=[Mount("/api", app=create_app(d)), Mount("/", app=create_dashboard("api"))]
    )
    with live_server(outer) as base, httpx.Client(base_url=base, timeout=10) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert '<meta name="durably-api" content="api/">' in page.text
        assert '<meta name="durably-api" content=".">' not in page.text
        assert http.get("/_dashboard/app.js").text == _static("app.js")
        for method, path in [("GET", "/_dashboard/nope.css"), ("POST", "/"), ("GET", "/x")]:
            response = http.request(method, path)
            assert response.status_code == 404
            assert response.json() == {"error": f"not found: {method} {path}"}
        assert http.get("/api/jobs").json()[0]["name"] == "add"
        # the API keeps its own page too, pointing at itself
        assert '<meta name="durably-api" content=".">' in http.get("/api/").text


def test_create_dashboard_escapes_the_api_path() -> None:
    app = create_dashboard('/a"b<c>/')
    with live_server(app) as base:
        html = httpx.get(base + "/").text
    assert '<meta name="durably-api" content="/a&quot;b&lt;c&gt;/">' in html


@pytest.mark.parametrize(
    "api", ["", "  ", "https://elsewhere.example/api/", "//cdn/api/", "api/?x=1"]
)
def test_create_dashboard_rejects_an_api_on_another_origin_or_empty(api: str) -> None:
    with pytest.raises(ValueError, match="api must be"):
        create_dashboard(api)
