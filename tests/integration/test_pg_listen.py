"""PostgreSQL's LISTEN thread: `stop()` ends it at once, not at the end of its poll."""

from __future__ import annotations

import threading

import pytest
from _backends import SERVER_URLS, prepare_server

import durably_dialects.sqlalchemy as sqlalchemy_dialect
from durably import create_durably


def test_stop_ends_the_listen_thread_without_waiting_out_its_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prepare_server("postgres")
    # a poll far longer than stop() waits for the thread (5 s): only a wake-up ends it
    monkeypatch.setattr(sqlalchemy_dialect, "LISTEN_POLL", 60.0)
    with create_durably(SERVER_URLS["postgres"]) as durably:
        for _ in range(2):  # a restarted worker listens again, and stops again
            durably.start()
            listening = [t for t in threading.enumerate() if t.name == "durably-listen"]
            assert len(listening) == 1
            durably.stop()
            assert not listening[0].is_alive()
