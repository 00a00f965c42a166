"""Optional behaviour installed with `durably.use(...)`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..execution import log_entry_from_event

if TYPE_CHECKING:
    from ..app import Durably

__all__ = ["LogPersistence", "with_log_persistence"]


class LogPersistence:
    """Persists every `log:write` event to the logs table."""

    def install(self, durably: Durably) -> None:
        store = durably._store

        def persist(event: Any) -> None:
            store.insert_logs([log_entry_from_event(event)])

        durably.on("log:write", persist)


def with_log_persistence() -> LogPersistence:
    """The plugin that persists logs: `durably.use(with_log_persistence())`."""
    return LogPersistence()
