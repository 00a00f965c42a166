"""Server-Sent Events: durably's events, emitted in worker threads, streamed to a client.

Frames are exactly `data: <compact json>\\n\\n`, as in the original; no `event:`/`id:`
lines and no comments, so a client may split the body on blank lines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.types import Message, Receive, Scope, Send

from durably import BaseEvent, Durably

from .wire import dumps

logger = logging.getLogger("durably.server")

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"connection", b"keep-alive"),
    # nginx buffers proxied responses unless told otherwise, which would stall the stream
    (b"x-accel-buffering", b"no"),
]


def frame(data: Any) -> bytes:
    """One SSE frame; data that cannot be JSON at all (a cycle) gives no bytes."""
    try:
        text = dumps(data)
    except ValueError:
        # one unencodable log line must not end the stream of a healthy run
        logger.warning("dropping an event that cannot be encoded as JSON", exc_info=True)
        return b""
    return b"data: " + text.encode("utf-8") + b"\n\n"


class EventFeed:
    """Every event of one Durably instance that `accept` takes, queued on this event loop.

    Listeners are called in the thread that emits (a worker thread, mostly), so the
    event is handed to the loop with `call_soon_threadsafe`. `accept` runs in that
    thread too: keep it a cheap, pure check.
    """

    def __init__(self, durably: Durably, accept: Callable[[BaseEvent], bool]) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[BaseEvent] = asyncio.Queue()
        self._accept = accept
        self._unsubscribe: Callable[[], None] | None = durably.on("*", self._on_event)

    def _on_event(self, event: BaseEvent) -> None:
        if self._unsubscribe is None or not self._accept(event):
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    async def get(self, timeout: float | None = None) -> BaseEvent | None:
        """The next event, or None once `timeout` seconds passed without one."""
        if timeout is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def pending(self) -> bool:
        """Whether events are queued (used to avoid synthesising one that is on its way)."""
        return not self._queue.empty()

    def close(self) -> None:
        """Remove the listener; idempotent."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()


class EventStream:
    """An ASGI response streaming `frames` until they end or the client disconnects.

    It always listens for `http.disconnect` itself (Starlette's StreamingResponse does
    not under ASGI spec 2.4), so a quiet stream notices a gone client at once and
    `on_close` removes its listeners.
    """

    def __init__(self, frames: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        self._frames = frames
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tasks:

                async def pump() -> None:
                    try:
                        await self._send_all(send)
                    except OSError:  # the client went away mid-write
                        pass
                    tasks.cancel_scope.cancel()

                tasks.start_soon(pump)
                await _wait_for_disconnect(receive)
                tasks.cancel_scope.cancel()
        finally:
            self._on_close()
            aclose = getattr(self._frames, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        async for chunk in self._frames:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
