"""A page on another origin cannot act on runs through the browser (CSRF), in real Chromium.

The API is served on one loopback port, an attacker's page on another port (same site:
another app on the same host, which the browser sends the session cookie to) or on
`localhost` (cross site: any web page against a server left open on 127.0.0.1). The page
submits a forged form to /trigger, /cancel and /retry and sends no-cors fetches to /cancel
and /retry; every request reaches the server (the test waits until it saw them) and nothing
changes. The dashboard on the API's own origin still triggers, cancels and retries.
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

from durably import Durably
from durably.server import create_app

from .conftest import PREFIX, Dashboard, _serve, _Server, wait_until

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None

if expect is not None:
    expect.set_options(timeout=20_000)

SESSION = {"name": "session", "value": "logged-in"}


@dataclass
class Seen:
    """The requests that reached the API (recorded by its authorize hook)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def add(self, request: Request) -> None:
        entry = {
            "method": request.method,
            "path": request.url.path.removeprefix(PREFIX),
            "site": request.headers.get("sec-fetch-site"),
            "origin": request.headers.get("origin"),
            "cookie": request.cookies.get(SESSION["name"]) == SESSION["value"],
        }
        with self.lock:
            self.requests.append(entry)

    def posts(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]


@dataclass
class Guarded:
    """The API and dashboard behind a session-cookie authorize hook that records requests."""

    app: Dashboard
    seen: Seen
    cookie_required: bool


@contextmanager
def _guarded(tmp_path: Path, cookie_required: bool) -> Iterator[Guarded]:
    seen = Seen()

    def authorize(request: Request) -> bool:
        seen.add(request)
        if not cookie_required:
            return True
        return request.cookies.get(SESSION["name"]) == SESSION["value"]

    def build(d: Durably) -> Any:
        return Starlette(routes=[Mount(PREFIX, app=create_app(d, authorize=authorize))])

    with contextmanager(_serve)(tmp_path, build, PREFIX + "/") as dashboard:
        yield Guarded(dashboard, seen, cookie_required)


def _attacker_page(api: str, failed: str, running: str) -> str:
    """Forged forms (one with a text/plain body that parses as a trigger) and no-cors
    fetches, fired at load; their answers are opaque to the page, as they are to an attacker."""
    forged_json = '{"jobName":"items","input":{"items":1},"pad":"'
    forms = [
        (f"{api}/trigger", "text/plain", forged_json, '"}'),
        (f"{api}/trigger", "application/x-www-form-urlencoded", "jobName", "items"),
        (f"{api}/cancel?runId={running}", "application/x-www-form-urlencoded", "x", "1"),
        (f"{api}/retry?runId={failed}", "application/x-www-form-urlencoded", "x", "1"),
    ]
    form_html = "".join(
        f'<iframe name="sink{i}"></iframe>'
        f'<form class="forged" method="post" action="{html.escape(action)}" '
        f'enctype="{enctype}" target="sink{i}">'
        f'<input name="{html.escape(name)}" value="{html.escape(value)}"></form>'
        for i, (action, enctype, name, value) in enumerate(forms)
    )
    fetches = json.dumps([f"{api}/cancel?runId={running}", f"{api}/retry?runId={failed}"])
    script = f"""
      window.fetched = [];
      for (const form of document.querySelectorAll("form.forged")) form.submit();
      for (const url of {fetches}) {{
        fetch(url, {{method: "POST", mode: "no-cors", credentials: "include"}})
          .then(() => window.fetched.push("sent"), (e) => window.fetched.push("failed " + e));
      }}
    """
    return f"<!doctype html><title>not durably</title>{form_html}<script>{script}</script>"


@pytest.mark.parametrize(
    ("attacker_host", "cookie_required"),
    [("127.0.0.1", True), ("localhost", False)],
    ids=["same-site-page-with-session-cookie", "cross-site-page-against-open-server"],
)
def test_page_on_another_origin_cannot_trigger_cancel_or_retry(
    tmp_path: Path, page: Any, attacker_host: str, cookie_required: bool
) -> None:
    with _guarded(tmp_path, cookie_required) as guarded:
        d = guarded.app.durably
        api = guarded.app.base + PREFIX
        failed = d.jobs["flaky"].trigger({}).id
        guarded.app.wait_status(failed, "failed")
        guarded.app.gates.hold("item-0")
        running = d.jobs["items"].trigger({"items": 1}).id
        guarded.app.wait_status(running, "running")
        before = sorted((run.id, run.status) for run in d.get_runs())

        page.context.add_cookies([{**SESSION, "url": guarded.app.base, "sameSite": "Lax"}])
        attacker_html = _attacker_page(api, failed, running)

        async def attacker(request: Request) -> HTMLResponse:
            return HTMLResponse(attacker_html)

        with _Server(Starlette(routes=[Route("/", attacker)])) as evil:
            port = urlsplit(evil.base).port
            attacker_url = f"http://{attacker_host}:{port}/"
            assert urlsplit(attacker_url).netloc != urlsplit(api).netloc
            page.goto(attacker_url)
            wait_until(lambda: len(page.evaluate("window.fetched")) == 2, timeout=30)
            # every forged request reached the API: nothing below passes for want of trying
            wait_until(lambda: len(guarded.seen.posts("/trigger")) >= 2, timeout=30)
            wait_until(lambda: len(guarded.seen.posts("/cancel")) >= 2, timeout=30)
            wait_until(lambda: len(guarded.seen.posts("/retry")) >= 2, timeout=30)

        attacks = [r for r in guarded.seen.requests if r["method"] == "POST"]
        expected_site = "same-site" if attacker_host == "127.0.0.1" else "cross-site"
        assert {r["site"] for r in attacks} == {expected_site}, attacks
        if cookie_required:  # the browser did send the session: only the origin check stops it
            assert all(r["cookie"] for r in attacks), attacks
        assert sorted((run.id, run.status) for run in d.get_runs()) == before
        guarded.app.gates.release_all()


def test_dashboard_on_its_own_origin_still_acts_with_a_session_cookie(
    tmp_path: Path, page: Any
) -> None:
    with _guarded(tmp_path, cookie_required=True) as guarded:
        d = guarded.app.durably
        page.context.add_cookies([{**SESSION, "url": guarded.app.base, "sameSite": "Strict"}])
        page.goto(guarded.app.url)
        expect(page.locator("#connection")).to_have_text("● Live")

        guarded.app.gates.hold("item-0")
        page.select_option("#trigger-job", "items")
        page.fill("#trigger-input", json.dumps({"items": 1}))
        page.click("#trigger-submit")
        link = page.locator("#trigger-result a")
        expect(link).to_be_visible()
        run_id = str(link.inner_text())
        link.click()
        expect(page.locator("#run-status")).to_have_text("running")
        page.click("#action-cancel")
        expect(page.locator("#run-status")).to_have_text("cancelled")
        guarded.app.gates.release("item-0")
        page.click("#action-retry")
        expect(page.locator("#run-status")).to_have_text("completed")

        run = d.get_run(run_id)
        assert run is not None and run.status == "completed"
        posts = [r for r in guarded.seen.requests if r["method"] == "POST"]
        assert [r["path"] for r in posts] == ["/trigger", "/cancel", "/retry"]
        assert {r["site"] for r in posts} == {"same-origin"}
        assert {r["origin"] for r in posts} == {guarded.app.base}
