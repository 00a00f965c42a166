"""The Hrana test server as a subprocess, and the libSQL URLs the tests run on.

The server (`tests/libsql_server/hrana_server.py`) runs in its own process: the official
`libsql` driver holds the GIL during network I/O, so a server thread in the test process
would never get to answer it.
"""

from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "libsql_server" / "hrana_server.py"

# (id, URL template, driver the URL selects): every remote transport the adapter has
REMOTE_TRANSPORTS = [
    ("ws-libsql_client", "libsql+ws://{hostport}", "libsql-client"),
    ("http-libsql", "libsql+http://{hostport}", "libsql"),
    ("http-libsql_client-batch", "libsql+http://{hostport}?driver=libsql-client", "libsql-client"),
]
FILE_TRANSPORTS = [
    ("file-libsql", "libsql+file:{path}", "libsql"),
    ("file-libsql_client", "libsql+file:{path}?driver=libsql-client", "libsql-client"),
]


@dataclass
class HranaServer:
    """A running test server: its address, its SQLite file, its counters."""

    process: subprocess.Popen[str]
    port: int
    db_path: Path
    auth_token: str | None

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, template: str) -> str:
        return template.format(hostport=self.hostport)

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://{self.hostport}/_test/stats", timeout=10) as resp:
            return dict(json.load(resp))

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the server's database file directly (what really got committed)."""
        with sqlite3.connect(self.db_path, timeout=30) as conn:
            return conn.execute(sql, params).fetchall()


@contextmanager
def hrana_server(
    directory: Path, *, auth_token: str | None = None, stream_expiry: float = 10.0
) -> Iterator[HranaServer]:
    """Start the Hrana test server on a free loopback port; stop it afterwards."""
    db_path = directory / "hrana.db"
    log = open(directory / "hrana-server.log", "w")  # noqa: SIM115 - closed below
    command = [sys.executable, str(SERVER_SCRIPT), "--db", str(db_path), "--port", "0"]
    command += ["--stream-expiry", str(stream_expiry)]
    if auth_token is not None:
        command += ["--auth-token", auth_token]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        port = _read_port(process, directory / "hrana-server.log")
        yield HranaServer(process, port, db_path, auth_token)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
        log.close()


def _read_port(process: subprocess.Popen[str], log: Path, timeout: float = 30.0) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            if line.startswith("LISTENING "):
                return int(line.split()[1])
        if process.poll() is not None:
            break
    process.kill()
    raise RuntimeError(f"the Hrana test server did not start: {log.read_text()[-2000:]}")


def external_url() -> str | None:
    """`LIBSQL_TEST_URL`: a real sqld or Turso database the remote tests also run against."""
    return os.environ.get("LIBSQL_TEST_URL") or None


EXTERNAL = external_url()
# (id, URL template) of every case the libSQL tests run on: each transport, and the real
# database of LIBSQL_TEST_URL when it is set
CASES = [(case_id, template) for case_id, template, _ in REMOTE_TRANSPORTS + FILE_TRANSPORTS]
if EXTERNAL is not None:
    CASES.append(("external", EXTERNAL))


@contextmanager
def case_url(case_id: str, template: str, directory: Path) -> Iterator[str]:
    """The URL of one case: LIBSQL_TEST_URL, a fresh file, or a fresh test server's."""
    if case_id == "external":
        yield template
    elif template.startswith("libsql+file:"):
        yield template.format(path=directory / "durably.db")
    else:
        with hrana_server(directory) as server:
            yield server.url(template)
