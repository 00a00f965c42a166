"""Every Python block of README.md runs, in order, as a reader would paste them.

The blocks share one namespace, like a tutorial session: the Quick start's `durably` and
`run` are there for the later blocks. Names a block uses but an application would have
(an API client, a database, a session store) are declared in an HTML comment right
before it, `<!-- placeholders: api, db -->`, and filled in from `PLACEHOLDERS` below;
nothing else is. Each block is also linted by ruff, so an example cannot teach a bug
(a lambda that binds a loop variable late).
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_until
from pydantic import BaseModel

from durably import Durably, unregister_dialect_plugin
from durably._dialect import iter_plugins

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(
    r"(?:<!--\s*placeholders:\s*(?P<names>[^>]*?)\s*-->\s*\n)?"
    r"^(?P<indent>[ ]*)```python\n(?P<code>.*?)^(?P=indent)```",
    re.S | re.M,
)


class PageIn(BaseModel):
    url: str


class _Api:
    def fetch_users(self, org_id: str) -> list[dict[str, Any]]:
        return [{"id": 1, "org": org_id}, {"id": 2, "org": org_id}]


class _Db:
    def __init__(self) -> None:
        self.saved: list[Any] = []

    def save(self, user: dict[str, Any]) -> None:
        self.saved.append(user)


class _Http:
    async def get(self, url: str) -> str:
        return f"<html>{url}</html>"


class _Sessions:
    async def is_valid(self, token: str | None) -> bool:
        return token == "valid"


class _AcmeDialect:
    def __init__(self, url: str) -> None:
        self.url = url


def _jobs_module(namespace: dict[str, Any]) -> types.ModuleType:
    """`from jobs import sync_users`: the module an application keeps its jobs in."""
    module = types.ModuleType("jobs")
    module.sync_users = namespace["sync_users"]  # type: ignore[attr-defined]
    return module


PLACEHOLDERS: dict[str, Any] = {
    "api": _Api(),
    "db": _Db(),
    "client": _Http(),
    "store": lambda body: None,
    "PageIn": PageIn,
    "log": logging.getLogger("readme"),
    "sessions": _Sessions(),
    "AcmeDialect": _AcmeDialect,
}


def python_blocks() -> list[tuple[int, list[str], str]]:
    """(line, declared placeholders, dedented code) of each Python block, in order."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in _BLOCK.finditer(text):
        names = [n.strip() for n in (match.group("names") or "").split(",") if n.strip()]
        line = text.count("\n", 0, match.start("code")) + 1
        blocks.append((line, names, textwrap.dedent(match.group("code"))))
    return blocks


def test_the_readme_has_python_blocks() -> None:
    assert len(python_blocks()) >= 8


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """One namespace for all blocks, run in an empty directory (`sqlite:///app.db`)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme"}
    yield namespace
    for value in list(namespace.values()):
        if isinstance(value, Durably):
            value.stop(timeout=5)
            value.close()
    for _, plugin in list(iter_plugins()):  # the dialect plugin a block registers
        if type(plugin).__name__ == "AcmePlugin":
            unregister_dialect_plugin(plugin)


def run_block(
    session: dict[str, Any], monkeypatch: pytest.MonkeyPatch, block: tuple[int, list[str], str]
) -> None:
    line, names, code = block
    unknown = set(names) - set(PLACEHOLDERS) - {"jobs"}
    assert not unknown, f"README.md:{line}: no placeholder for {sorted(unknown)}"
    for name in names:
        if name == "jobs":  # a module of the application: `from jobs import sync_users`
            monkeypatch.setitem(sys.modules, "jobs", _jobs_module(session))
        else:
            session[name] = PLACEHOLDERS[name]
    try:
        exec(compile(code, f"README.md:{line}", "exec"), session)
    except Exception as exc:
        pytest.fail(f"README.md:{line}: the block raised {type(exc).__name__}: {exc}")


def test_every_python_block_runs_in_order(
    session: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for block in python_blocks():
        run_block(session, monkeypatch, block)


def test_the_quick_start_does_what_it_says(
    session: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_block(session, monkeypatch, python_blocks()[0])
    durably, run = session["durably"], session["run"]
    stored = durably.get_run(run.id)
    assert stored.status == "completed"
    assert [s.name for s in durably.get_steps(run.id)] == ["fetch-users", "save-1", "save-2"]
    assert session["result"].output.synced == 2


def test_the_lifespan_example_starts_the_worker_and_stops_it_on_shutdown(
    session: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = python_blocks()
    run_block(session, monkeypatch, blocks[0])  # defines sync_users
    session["durably"].stop(timeout=5)
    run_block(session, monkeypatch, next(b for b in blocks if "lifespan" in b[2]))
    durably, app = session["durably"], session["app"]

    async def serve_once() -> str:
        async with app.router.lifespan_context(app):  # startup: migrate, start
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                body = {"jobName": "sync-users", "input": {"org_id": "x"}}
                response = await client.post("/api/durably/trigger", json=body)
                assert response.status_code == 200, response.text
                run_id: str = response.json()["runId"]
            await asyncio.to_thread(
                wait_until, lambda: durably.get_run(run_id).status == "completed"
            )
            assert _slot_threads()
        return run_id  # the shutdown half has run

    asyncio.run(serve_once())
    assert not _slot_threads()  # it stopped the worker


def test_the_async_example_runs(session: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks()
    run_block(session, monkeypatch, blocks[0])
    run_block(session, monkeypatch, next(b for b in blocks if "fetch_page" in b[2]))
    durably = session["durably"]
    durably.stop(timeout=5)
    durably.register({"fetch_page": session["fetch_page"]})
    run = durably.jobs.fetch_page.trigger({"url": "https://example.com"})
    assert durably.process_one()
    assert durably.get_run(run.id).status == "completed"
    outputs = [s.output for s in durably.get_steps(run.id)]
    assert outputs == ["<html>https://example.com</html>", None]


def _slot_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("durably-slot-")]


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"line-{b[0]}")
def test_every_python_block_passes_ruff(block: tuple[int, list[str], str], tmp_path: Path) -> None:
    line, _, code = block
    path = tmp_path / f"readme_line_{line}.py"
    path.write_text(code, encoding="utf-8")
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run(
        # bugbear (a lambda binding a loop variable late) and syntax; names from earlier
        # blocks and placeholders are not "undefined" here: running the blocks checks them
        [str(ruff), "check", "--no-cache", "--select", "B,E9,F63,F7", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"README.md:{line}:\n{result.stdout}{result.stderr}"
