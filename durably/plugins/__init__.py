"""Optional behaviour installed with `durably.use(...)`."""

from __future__ import annotations

from typing import Any

__all__ = ["LogPersistence", "with_log_persistence"]


class LogPersistence:
    """Stores every `step.log` line in the logs table (readable with `get_logs`).

    The run's execution writes them itself, fenced by its lease like its steps, so a
    worker that lost its run stores nothing, and lines logged while a resumed run
    replays its completed steps are not stored twice.
    """

    def install(self, durably: Any) -> None:
        durably.persist_logs = True


def with_log_persistence() -> LogPersistence:
    """The plugin that persists logs: `durably.use(with_log_persistence())`."""
    return LogPersistence()
