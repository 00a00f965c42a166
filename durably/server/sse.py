"""Server-Sent Events: durably's events, emitted in worker threads, streamed to a client.

Frames are exactly `data: <compact json>\\n\\n`, as in the original; no `event:`/`id:`
lines and no comments, so a client may split the body on blank lines.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
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
