"""The value the parts of one Durably instance share: store, events, clock, settings, jobs.

The worker, a run's execution, the leases and the run operations receive this instead of
the `Durably` facade, so each names what it uses and nothing reaches into the facade.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ._clock import Clock
from ._errors import ConfigurationError
from ._events import EventEmitter
from ._jobs import JobDefinition
from ._store import Store

# The real gap between two heartbeats is one interval plus the time the heartbeat takes
# (a busy database, a loaded machine): the threshold must leave room for a second one.
HEARTBEATS_PER_THRESHOLD = 2


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    if value == float("inf"):
        raise ConfigurationError(f"{name} must be finite, got {value!r}")
    return float(value)


# what one stored JSON value (a payload, a step result, an output) may weigh: well under
# MySQL/MariaDB's default max_allowed_packet (16 MiB), which bounds one whole statement
DEFAULT_MAX_PAYLOAD_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """The timing and concurrency options of `create_durably`, validated."""

    polling_interval: float = 1.0
    heartbeat_interval: float = 5.0
    stale_threshold: float = 30.0
    max_concurrent_runs: int = 1
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES

    @classmethod
    def validated(
        cls,
        *,
        polling_interval: Any,
        heartbeat_interval: Any,
        stale_threshold: Any,
        max_concurrent_runs: Any,
        max_payload_bytes: Any = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> Settings:
        polling = _seconds("polling_interval", polling_interval)
        heartbeat = _seconds("heartbeat_interval", heartbeat_interval)
        stale = _seconds("stale_threshold", stale_threshold)
        if stale < HEARTBEATS_PER_THRESHOLD * heartbeat:
            raise ConfigurationError(
                f"stale_threshold ({stale} s) must be at least {HEARTBEATS_PER_THRESHOLD} x "
                f"heartbeat_interval ({heartbeat} s): the gap between two heartbeats of a "
                "healthy run reaches more than one interval, and a run whose heartbeat is "
                "older than the threshold is taken over"
            )
        if (
            isinstance(max_concurrent_runs, bool)
            or not isinstance(max_concurrent_runs, int)
            or max_concurrent_runs < 1
        ):
            raise ConfigurationError(
                f"max_concurrent_runs must be a positive integer, got {max_concurrent_runs!r}"
            )
        if (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or max_payload_bytes < 1
        ):
            raise ConfigurationError(
                f"max_payload_bytes must be a positive integer, got {max_payload_bytes!r}"
            )
        return cls(polling, heartbeat, stale, max_concurrent_runs, max_payload_bytes)


class JobRegistry:
    """The job definitions registered with one instance, by job name."""

    def __init__(self) -> None:
        self._definitions: dict[str, JobDefinition[Any, Any]] = {}
        self._names: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, definition: JobDefinition[Any, Any]) -> bool:
        """Register `definition`; False if the same one was there already.

        A different definition under a registered name raises `ValueError`.
        """
        with self._lock:
            known = self._definitions.get(definition.name)
            if known is not None:
                if not known.same_as(definition):
                    raise ValueError(definition.name)
                return False
            self._definitions[definition.name] = definition
            self._names = tuple(sorted(self._definitions))
            return True

    def names(self) -> tuple[str, ...]:
        """The registered job names, sorted: what this instance's workers claim."""
        return self._names

    def get(self, name: str) -> JobDefinition[Any, Any]:
        return self._definitions[name]


class Announcements:
    """Keeps one run's events in order across threads: a worker that claims a run the
    moment its trigger or retry commits waits to emit `run:start` until that
    `run:trigger` / `run:retry` was emitted (listeners see a run's events in order)."""

    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._cond = threading.Condition()

    @contextmanager
    def announcing(self, run_ids: Iterable[str]) -> Iterator[None]:
        """Around the commit that makes `run_ids` claimable and the events that say so."""
        ids = set(run_ids)
        with self._cond:
            self._pending |= ids
        try:
            yield
        finally:
            with self._cond:
                self._pending -= ids
                self._cond.notify_all()

    def wait(self, run_id: str) -> None:
        """Return once no announcement of `run_id` is under way (at once, nearly always)."""
        if run_id not in self._pending:
            return
        with self._cond:
            self._cond.wait_for(lambda: run_id not in self._pending, timeout=60)


@dataclass
class Runtime:
    """What the parts of one instance share."""

    store: Store
    events: EventEmitter
    clock: Clock
    settings: Settings
    jobs: JobRegistry
    # set by `with_log_persistence`: a run's execution stores its `step.log` lines
    persist_logs: bool = False
    announcements: Announcements = field(default_factory=Announcements)
