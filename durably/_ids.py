"""ULIDs, monotonic within a process so that ids sort in creation order."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_MAX = (1 << 80) - 1
# two characters (10 bits) at a time: a ULID is 13 table lookups
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


class UlidGenerator:
    """Makes ULIDs; within one millisecond the random part counts up, so ids never tie."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def new(self, ms: int | None = None) -> str:
        """Return a new 26-character ULID for `ms` (milliseconds since the epoch, default now)."""
        with self._lock:
            now = ms if ms is not None else time.time_ns() // 1_000_000
            if now <= self._last_ms:
                now = self._last_ms
                rand = self._last_rand + 1
                if rand > _RANDOM_MAX:
                    now += 1
                    rand = int.from_bytes(os.urandom(10), "big") >> 1
            else:
                # keep headroom so increments within the millisecond never overflow
                rand = int.from_bytes(os.urandom(10), "big") >> 1
            self._last_ms = now
            self._last_rand = rand
        value = (now << 80) | rand
        pairs = _PAIRS
        chunks = []
        for _ in range(13):
            chunks.append(pairs[value & 1023])
            value >>= 10
        chunks.reverse()
        return "".join(chunks)


_default = UlidGenerator()


def new_ulid() -> str:
    """A new ULID from the process-wide generator."""
    return _default.new()
