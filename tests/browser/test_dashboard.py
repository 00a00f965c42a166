"""The dashboard end to end: a real Chromium on the page, a real worker behind the API.

Every wait is Playwright's `expect` (it polls until the page matches, up to a generous limit)
or `wait_until`; no state is asserted after a fixed sleep.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from .conftest import PREFIX, Dashboard, screenshot, wait_until

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None

EN_DASH = "\N{EN DASH}"  # the page writes a range of runs as "Runs 1<EN DASH>20"

if expect is not None:
    expect.set_options(timeout=20_000)


def _open(page: Any, url: str) -> None:
    page.goto(url)
    expect(page.locator("#connection")).to_have_text("● Live")


def _row(page: Any, run_id: str) -> Any:
    return page.locator(f'#runs-body tr[data-run-id="{run_id}"]')


def _trigger_from_page(page: Any, job: str, payload: Any) -> str:
    page.select_option("#trigger-job", job)
    page.fill("#trigger-input", json.dumps(payload))
    page.click("#trigger-submit")
    link = page.locator("#trigger-result a")
    expect(link).to_be_visible()
    return str(link.inner_text())


def test_run_triggered_from_the_page_shows_live_progress_and_completes(
    dashboard: Dashboard, page: Any, request: pytest.FixtureRequest
) -> None:
    gates = dashboard.gates
    gates.hold("item-0", "item-1", "item-2")
    _open(page, dashboard.url)
    expect(page.locator("#trigger-job")).to_have_value("flaky")  # the first job by name

    run_id = _trigger_from_page(page, "items", {"items": 3})
    run = dashboard.durably.get_run(run_id)
    assert run is not None and run.payload == {"items": 3} and run.job_name == "items"

    row = _row(page, run_id)
    expect(row.locator(".badge")).to_have_text("running")
    expect(row.locator(".progress-text")).to_have_text("—")
    gates.release("item-0")
    expect(row.locator(".progress-text")).to_have_text("1 / 3 · item 1 of 3")
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "1")
    expect(row.locator(".badge")).to_have_text("running")
    screenshot(page, request.node.name, "list-running")

    row.locator("a").click()
    expect(page.locator("#run-view")).to_be_visible()
    expect(page.locator("#run-id")).to_have_text(run_id)
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#run-progress .progress-text")).to_have_text("1 / 3 · item 1 of 3")
    expect(page.locator('#steps-body tr[data-step-index="0"]')).to_have_attribute(
        "data-status", "completed"
    )
    expect(page.locator("#action-cancel")).to_be_enabled()
    expect(page.locator("#action-retry")).to_be_disabled()
    expect(page.locator("#action-delete")).to_be_disabled()

    gates.release("item-1")
    expect(page.locator("#run-progress .progress-text")).to_have_text("2 / 3 · item 2 of 3")
    progressbar = page.locator("#run-progress").get_by_role("progressbar")
    expect(progressbar).to_have_attribute("aria-valuenow", "2")
    expect(progressbar).to_have_attribute("aria-valuemax", "3")
    # the step in flight, announced by step:start over the run's stream
    live = page.locator('#steps-body tr[data-step-index="2"]')
    expect(live).to_have_attribute("data-status", "running")
    expect(live).to_contain_text("item-2")
    screenshot(page, request.node.name, "run-running")

    gates.release("item-2")
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#run-progress .progress-text")).to_have_text("3 / 3 · item 3 of 3")
    expect(page.locator("#run-output")).to_have_text(json.dumps({"processed": 3}, indent=2))
    steps = page.locator("#steps-body tr")
    expect(steps).to_have_count(3)
    for index in range(3):
        step = page.locator(f'#steps-body tr[data-step-index="{index}"]')
        expect(step).to_have_attribute("data-status", "completed")
        expect(step).to_contain_text(f"item-{index}")
        expect(step.locator("td").nth(5)).to_have_text(str(index * index))
    expect(page.locator("#logs-body tr")).to_have_count(3)
    expect(page.locator("#logs-body tr").first).to_contain_text("processed")
    expect(page.locator("#run-error-card")).to_be_hidden()
    expect(page.locator("#action-delete")).to_be_enabled()
    expect(page.locator("#action-cancel")).to_be_disabled()
    screenshot(page, request.node.name, "run-completed")

    page.click("#back-link")
    expect(_row(page, run_id).locator(".badge")).to_have_text("completed")
    expect(_row(page, run_id).locator(".progress-text")).to_have_text("3 / 3 · item 3 of 3")


def test_failed_run_shows_its_error_and_completes_after_retry_from_the_page(
    dashboard: Dashboard, page: Any, request: pytest.FixtureRequest
) -> None:
    _open(page, dashboard.url)
    run_id = _trigger_from_page(page, "flaky", {})
    page.locator("#trigger-result a").click()

    expect(page.locator("#run-status")).to_have_text("failed")
    error = page.locator("#run-error")
    expect(error).to_have_text("RuntimeError: not fixed yet: fixed.flag is missing")
    expect(page.locator("#run-failed-step")).to_have_text("in step “check”")
    failed_step = page.locator('#steps-body tr[data-step-index="1"]')
    expect(failed_step).to_have_attribute("data-status", "failed")
    expect(failed_step).to_contain_text("RuntimeError: not fixed yet")
    expect(page.locator('#steps-body tr[data-step-index="0"]')).to_have_attribute(
        "data-status", "completed"
    )
    expect(page.locator("#action-retry")).to_be_enabled()
    screenshot(page, request.node.name, "run-failed")

    dashboard.fix_file.write_text("fixed")
    page.click("#action-retry")
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#run-output")).to_have_text('"fixed"')
    expect(page.locator("#run-error-card")).to_be_hidden()
    expect(page.locator('#steps-body tr[data-step-index="1"]')).to_have_attribute(
        "data-status", "completed"
    )
    expect(page.locator("#action-retry")).to_be_disabled()
    run = dashboard.durably.get_run(run_id)
    assert run is not None and run.status == "completed" and run.output == "fixed"


def test_running_run_is_cancelled_then_deleted_from_the_page(
    dashboard: Dashboard, page: Any, request: pytest.FixtureRequest
) -> None:
    dashboard.gates.hold("item-0")
    run = dashboard.durably.jobs["items"].trigger({"items": 2})
    dashboard.wait_status(run.id, "running")

    page.goto(f"{dashboard.url}#/runs/{run.id}")
    expect(page.locator("#run-status")).to_have_text("running")
    page.click("#action-cancel")
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(page.locator("#run-message")).to_have_text("Cancel requested.")
    expect(page.locator("#action-cancel")).to_be_disabled()
    expect(page.locator("#action-retry")).to_be_enabled()
    current = dashboard.durably.get_run(run.id)
    assert current is not None and current.status == "cancelled"
    dashboard.gates.release("item-0")
    screenshot(page, request.node.name, "run-cancelled")

    # a dismissed confirmation deletes nothing
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#action-delete")
    expect(page.locator("#run-status")).to_have_text("cancelled")
    assert dashboard.durably.get_run(run.id) is not None

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#action-delete")
    expect(page.locator("#list-view")).to_be_visible()
    expect(page.locator("#flash")).to_have_text(f"Run {run.id} was deleted.")
    expect(page.locator("#runs-empty")).to_have_text("No runs yet: trigger one above.")
    assert dashboard.durably.get_run(run.id) is None

    page.goto(f"{dashboard.url}#/runs/{run.id}")
    expect(page.locator("#run-missing")).to_contain_text("does not exist")


def test_runs_list_filters_by_status_and_job_and_pages(
    dashboard: Dashboard, page: Any, request: pytest.FixtureRequest
) -> None:
    d = dashboard.durably
    done = [d.jobs["items"].trigger({"items": 1}) for _ in range(3)]
    failed = [d.jobs["flaky"].trigger({"n": n}) for n in range(2)]
    for run in done:
        dashboard.wait_status(run.id, "completed")
    for run in failed:
        dashboard.wait_status(run.id, "failed")
    newest_first = [run.id for run in reversed(done + failed)]

    _open(page, dashboard.url)
    rows = page.locator("#runs-body tr")
    expect(rows).to_have_count(5)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.runId)") == newest_first

    page.select_option("#filter-status", "failed")
    expect(rows).to_have_count(2)
    expect(page.locator('#runs-body tr[data-status="failed"]')).to_have_count(2)
    assert "status=failed" in page.url

    page.select_option("#filter-status", "")
    page.select_option("#filter-job", "items")
    expect(rows).to_have_count(3)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.runId)") == [
        run.id for run in reversed(done)
    ]
    assert "job=items" in page.url and "status=" not in page.url

    page.select_option("#filter-status", "failed")
    expect(page.locator("#runs-empty")).to_have_text("No runs match these filters.")
    expect(rows).to_have_count(0)
    screenshot(page, request.node.name, "filtered-empty")

    # a filtered view is a link: reloading it gives the same view
    page.reload()
    expect(page.locator("#filter-job")).to_have_value("items")
    expect(page.locator("#filter-status")).to_have_value("failed")
    expect(page.locator("#runs-empty")).to_be_visible()

    # pages of two, newest first
    page.goto(f"{dashboard.url}#/?limit=2")
    expect(rows).to_have_count(2)
    expect(page.locator("#page-info")).to_have_text(f"Runs 1{EN_DASH}2")
    expect(page.locator("#page-prev")).to_be_disabled()
    seen = rows.evaluate_all("rows => rows.map(r => r.dataset.runId)")
    page.click("#page-next")
    expect(page.locator("#page-info")).to_have_text(f"Runs 3{EN_DASH}4")
    seen += rows.evaluate_all("rows => rows.map(r => r.dataset.runId)")
    page.click("#page-next")
    expect(page.locator("#page-info")).to_have_text(f"Runs 5{EN_DASH}5")
    expect(page.locator("#page-next")).to_be_disabled()
    seen += rows.evaluate_all("rows => rows.map(r => r.dataset.runId)")
    assert seen == newest_first
    page.click("#page-prev")
    expect(page.locator("#page-info")).to_have_text(f"Runs 3{EN_DASH}4")


def test_new_runs_appear_in_the_list_without_a_reload(dashboard: Dashboard, page: Any) -> None:
    _open(page, dashboard.url)
    expect(page.locator("#runs-empty")).to_be_visible()
    run = dashboard.durably.jobs["items"].trigger({"items": 1})
    expect(_row(page, run.id).locator(".badge")).to_have_text("completed")
    expect(_row(page, run.id).locator(".progress-text")).to_have_text("1 / 1 · item 1 of 1")


def test_invalid_input_is_reported_and_triggers_nothing(dashboard: Dashboard, page: Any) -> None:
    _open(page, dashboard.url)
    page.select_option("#trigger-job", "items")
    page.fill("#trigger-input", "{not json")
    page.click("#trigger-submit")
    expect(page.locator("#trigger-error")).to_contain_text("not valid JSON")
    expect(page.locator("#trigger-input")).to_have_attribute("aria-invalid", "true")

    page.fill("#trigger-input", '{"items": "many"}')
    page.click("#trigger-submit")
    expect(page.locator("#trigger-error")).to_contain_text("items")
    expect(page.locator("#trigger-result")).to_be_hidden()
    assert dashboard.durably.get_runs() == []


def test_dashboard_at_root_reaches_the_api_mounted_apart(
    split_dashboard: Dashboard, page: Any
) -> None:
    _open(page, split_dashboard.url)
    run_id = _trigger_from_page(page, "items", {"items": 2})
    expect(_row(page, run_id).locator(".badge")).to_have_text("completed")
    page.locator("#trigger-result a").click()
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#steps-body tr")).to_have_count(2)


def test_run_page_says_so_when_the_run_is_deleted_elsewhere(
    dashboard: Dashboard, page: Any
) -> None:
    run = dashboard.durably.jobs["flaky"].trigger({})
    dashboard.wait_status(run.id, "failed")
    page.goto(f"{dashboard.url}#/runs/{run.id}")
    expect(page.locator("#run-status")).to_have_text("failed")

    dashboard.durably.delete_run(run.id)
    expect(page.locator("#run-missing")).to_have_text(
        f"Run {run.id} does not exist (it may have been deleted)."
    )
    expect(page.locator("#run-body")).to_be_hidden()
    expect(page.locator("#action-delete")).to_be_disabled()


def test_list_read_answered_after_later_events_is_corrected(
    dashboard: Dashboard, page: Any
) -> None:
    """A /runs answer that predates the run's last events must not leave the row stale."""
    gates = dashboard.gates
    gates.hold("item-0")
    _open(page, dashboard.url)
    held: list[tuple[Any, Any]] = []
    page.route(
        lambda url: urlsplit(url).path == f"{PREFIX}/runs",
        lambda route: held.append((route, route.fetch())),
    )
    run = dashboard.durably.jobs["items"].trigger({"items": 1})
    dashboard.wait_status(run.id, "running")
    # the list reload that run:trigger starts is answered from the database now, and held
    wait_until(lambda: held or page.wait_for_timeout(50), timeout=20)
    route, stale = held.pop(0)
    assert [r["status"] for r in stale.json() if r["id"] == run.id] != ["completed"]

    gates.release("item-0")
    dashboard.wait_status(run.id, "completed")
    page.unroute("**/*")
    route.fulfill(response=stale)
    for later, response in held:
        later.fulfill(response=response)
    expect(_row(page, run.id).locator(".badge")).to_have_text("completed")
