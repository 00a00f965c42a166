"""Server-Sent Events: durably's events, emitted in worker threads, streamed to a client.

Frames are `data: <compact json>\\n\\n`, as in the original, and no `event:`/`id:` lines.
Two additions protect the server and the stream:

- a `: keep-alive` comment after `KEEPALIVE_SECONDS` (15 s) without a frame, so proxies
  and load balancers do not close a quiet stream (EventSource ignores comments, and the
  original's clients only use EventSource's `onmessage`);
- a bound on what may wait for a slow client: more than `MAX_QUEUED_FRAMES` (1,000)
  frames or `MAX_QUEUED_BYTES` (8 MiB) waiting, beyond what the socket buffers took, and
  the client is dropped: its stream ends, its listener is removed, a warning is logged.
  Without it a client that stops reading makes the server buffer its events forever.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
from starlette.types import Message, Receive, Scope, Send

from durably import BaseEvent

from .wire import dumps

logger = logging.getLogger("durably.server")

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"connection", b"keep-alive"),
    # nginx buffers proxied responses unless told otherwise, which would stall the stream
    (b"x-accel-buffering", b"no"),
]
KEEPALIVE_FRAME = b": keep-alive\n\n"
# read when a stream starts, so a test can shorten them
KEEPALIVE_SECONDS = 15.0
MAX_QUEUED_FRAMES = 1_000
MAX_QUEUED_BYTES = 8 * 1024 * 1024


async def frames(
    events: AsyncIterator[BaseEvent], to_json: Callable[[BaseEvent], Any]
) -> AsyncIterator[bytes]:
    """One SSE frame per event. One that cannot be sent (a cycle, a lone surrogate) is
    dropped with a warning: it must not end the stream of a healthy run, nor all of them.
    """
    async for event in events:
        try:
            data = dumps(to_json(event)).encode("utf-8")
        except Exception:
            logger.warning("dropping a %s event that cannot be sent", event.type, exc_info=True)
            continue
        yield b"data: " + data + b"\n\n"


class Outbox:
    """The frames waiting for one client, bounded in count and bytes.

    `put` refuses a frame that would pass a bound (a first frame is always taken, however
    big), `get` waits for the next one, at most `idle` seconds (then it returns the
    keep-alive comment), and returns None once `close`d and empty.
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.bytes = 0
        self._frames: deque[bytes] = deque()
        self._ready = anyio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: bytes) -> bool:
        """Queue `frame`; False (and nothing queued) when the client is too far behind."""
        if self._frames and (
            len(self._frames) >= self.max_frames or self.bytes + len(frame) > self.max_bytes
        ):
            return False
        self._frames.append(frame)
        self.bytes += len(frame)
        self._ready.set()
        return True

    def close(self) -> None:
        """No more frames: `get` returns None once the queued ones are taken."""
        self._closed = True
        self._ready.set()

    async def get(self, idle: float) -> bytes | None:
        if not self._frames and not self._closed:
            self._ready = anyio.Event()
            with anyio.move_on_after(idle):
                await self._ready.wait()
        if self._frames:
            frame = self._frames.popleft()
            self.bytes -= len(frame)
            return frame
        return None if self._closed else KEEPALIVE_FRAME


class EventStream:
    """An ASGI response streaming `frames` until they end or the client disconnects.

    One task takes the frames as they come and queues them in an `Outbox`, another sends
    them, so a client that reads slowly never holds events back in the feed: it falls
    behind in its own bounded outbox and is dropped when that is full. It always listens
    for `http.disconnect` itself (Starlette's StreamingResponse does not under ASGI spec
    2.4), so a quiet stream notices a gone client at once and `on_close` removes its
    listeners. `keepalive` (default `KEEPALIVE_SECONDS`) is the silence before a comment.
    """

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        on_close: Callable[[], None],
        *,
        keepalive: float | None = None,
        max_frames: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._frames = frames
        self._on_close = on_close
        self.keepalive = KEEPALIVE_SECONDS if keepalive is None else keepalive
        self.outbox = Outbox(
            MAX_QUEUED_FRAMES if max_frames is None else max_frames,
            MAX_QUEUED_BYTES if max_bytes is None else max_bytes,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tasks:

                async def take() -> None:
                    if not await self._take_all():
                        _log_drop(scope, self.outbox)
                        tasks.cancel_scope.cancel()

                async def pump() -> None:
                    try:
                        await self._send_all(send)
                    except OSError:  # the client went away mid-write
                        pass
                    tasks.cancel_scope.cancel()

                tasks.start_soon(take)
                tasks.start_soon(pump)
                await _wait_for_disconnect(receive)
                tasks.cancel_scope.cancel()
        finally:
            self._on_close()
            aclose = getattr(self._frames, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

    async def _take_all(self) -> bool:
        """Queue every frame until they end (True) or the outbox is full (False)."""
        async for frame in self._frames:
            if not self.outbox.put(frame):
                return False
            # let the sender run: a burst of queued events must not fill the outbox of a
            # client that reads well
            await anyio.lowlevel.checkpoint()
        self.outbox.close()
        return True

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        while (frame := await self.outbox.get(self.keepalive)) is not None:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _log_drop(scope: Scope, outbox: Outbox) -> None:
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "a client"
    logger.warning(
        "dropping the SSE stream %s of %s: it is too far behind (%d frames, %d bytes "
        "waiting; the bounds are %d frames or %d bytes)",
        scope.get("path", "?"),
        who,
        len(outbox),
        outbox.bytes,
        outbox.max_frames,
        outbox.max_bytes,
    )


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
