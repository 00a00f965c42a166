"""The dashboard in a real Chromium against what protects a served API: keep-alive comments
on its streams, and `durably serve`'s basic auth (the app `build_app` builds, in a thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from durably import Durably
from durably.cli.guard import Credentials, allowed_hosts
from durably.cli.worker import build_app
from durably.server import sse

from .conftest import Dashboard, _serve, screenshot, wait_until

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None

if expect is not None:
    expect.set_options(timeout=20_000)

PASSWORD = "correct-horse-7f3a9c"

# counts the keep-alive comments of a stream read with fetch, next to the page's EventSources
COUNT_KEEPALIVES = """async (url) => {
  window.keepAlives = 0;
  const response = await fetch(url);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      window.keepAlives += decoder.decode(value).split(": keep-alive\\n\\n").length - 1;
    }
  })();
}"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Dashboard]:
    """`durably serve`'s app (dashboard under /api/) with basic auth for alice."""

    def build(d: Durably) -> Any:
        return build_app(d, allowed_hosts("127.0.0.1", []), Credentials("alice", PASSWORD))

    yield from _serve(tmp_path, build, "/")


def test_the_dashboard_stays_live_through_keep_alive_comments(
    dashboard: Dashboard, page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.05)
    page.goto(dashboard.url)
    expect(page.locator("#connection")).to_have_text("● Live")
    page.evaluate(COUNT_KEEPALIVES, dashboard.url + "runs/subscribe")
    wait_until(lambda: page.evaluate("window.keepAlives") >= 5)
    expect(page.locator("#connection")).to_have_text("● Live")
    run = dashboard.durably.jobs["items"].trigger({"items": 1})
    row = page.locator(f'#runs-body tr[data-run-id="{run.id}"]')
    expect(row.locator(".badge")).to_have_text("completed")
    expect(page.locator("#connection")).to_have_text("● Live")


def test_served_dashboard_asks_for_credentials_and_works_with_them(
    served: Dashboard, browser: Any, request: pytest.FixtureRequest
) -> None:
    anonymous = browser.new_context()
    try:
        answer = anonymous.request.get(served.url + "api/")
        assert answer.status == 401
        assert answer.headers["www-authenticate"].startswith('Basic realm="durably"')
    finally:
        anonymous.close()

    # Playwright answers only a challenge with the credentials: the page loading at all
    # shows the browser took the WWW-Authenticate header
    context = browser.new_context(http_credentials={"username": "alice", "password": PASSWORD})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    uncaught: list[str] = []
    tab.on("pageerror", lambda exc: uncaught.append(str(exc)))
    try:
        tab.goto(served.url)  # `/` redirects to /api/, both behind the password
        assert tab.url == served.base + "/api/"
        expect(tab.locator("#connection")).to_have_text("● Live")
        triggered = httpx.post(
            served.base + "/api/trigger",
            json={"jobName": "items", "input": {"items": 2}},
            auth=("alice", PASSWORD),
            timeout=10,
        )
        run_id = triggered.json()["runId"]
        # the list's EventSource and its fetches carry the credentials too
        row = tab.locator(f'#runs-body tr[data-run-id="{run_id}"]')
        expect(row.locator(".badge")).to_have_text("completed")
        row.locator("a").first.click()
        expect(tab.locator("#run-status")).to_have_text("completed")
        expect(tab.locator("#steps-body tr")).to_have_count(2)
        assert uncaught == []
    finally:
        screenshot(tab, request.node.name, "final")
        context.close()
