"""`StepContext`: what a job function uses to run persisted steps, report progress and log.

The sync and async flavours share one implementation (`_StepCore`); the async one awaits
the step function when it returns an awaitable and makes its database calls in a thread,
so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError, to_json

from ._errors import StepSerializationError
from ._events import Progress
from ._text import json_size

T = TypeVar("T")

MISSING: Any = object()
_adapters: dict[Any, TypeAdapter[Any]] = {}
_hint_cache: dict[tuple[Any, str], Any] = {}
# types whose JSON round trip is the identity (not floats: NaN becomes null)
_JSON_IDENTITY = (str, int, bool)


class StepHost(Protocol):
    """What a step context needs from the run it belongs to (`RunExecution`)."""

    @property
    def run_id(self) -> str: ...

    @property
    def job_name(self) -> str: ...

    @property
    def next_index(self) -> int: ...

    @property
    def max_payload_bytes(self) -> int:
        """The largest step result, as JSON in UTF-8 bytes, that may be stored."""
        ...

    def begin_step(self, name: str) -> tuple[int, Any]:
        """Check the boundary and the name; (index, stored output JSON or MISSING)."""
        ...

    def vouch(self) -> None:
        """Before a step function runs: the run must still be this worker's."""
        ...

    def late(self) -> bool:
        """Whether `vouch` must run again (a deadline passed, or a stop was asked for)."""
        ...

    def step_started(self, index: int, name: str) -> str: ...

    def step_completed(
        self, index: int, name: str, text: str, value: Any, started: str
    ) -> None: ...

    def step_failed(self, index: int, name: str, exc: BaseException, started: str) -> None: ...

    def step_ended(self) -> None: ...

    def progress(self, progress: Progress) -> None: ...

    def log(self, level: str, message: str, data: Any) -> None: ...

    async def settle(self) -> None:
        """Wait for the database writes an async job started in the background."""
        ...


def _adapter(tp: Any) -> TypeAdapter[Any]:
    try:
        adapter = _adapters.get(tp)
    except TypeError:  # unhashable type expression
        return TypeAdapter(tp)
    if adapter is None:
        adapter = _adapters[tp] = TypeAdapter(tp)
    return adapter


def _return_type(fn: Callable[..., Any]) -> Any:
    annotations = getattr(fn, "__annotations__", None)
    if not annotations or "return" not in annotations:
        return MISSING
    hint = annotations["return"]
    if isinstance(hint, str):
        key = (getattr(fn, "__code__", fn), hint)
        resolved = _hint_cache.get(key, MISSING)
        if resolved is MISSING:
            resolved = typing.get_type_hints(fn).get("return", MISSING)
            _hint_cache[key] = resolved
        hint = resolved
    if hint is MISSING:
        return MISSING
    if inspect.iscoroutinefunction(fn):
        return hint
    origin = typing.get_origin(hint)
    if origin in (Awaitable, typing.Coroutine) or (
        isinstance(origin, type) and issubclass(origin, Awaitable)
    ):
        args = typing.get_args(hint)
        return args[-1] if args else MISSING
    return hint


def _to_json(name: str, result: Any, limit: int) -> tuple[str, Any]:
    """The stored text of a step result, and the value a replay would return."""
    try:
        text = to_json(result).decode()
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise StepSerializationError(
            f"step {name!r} returned a {type(result).__module__}.{type(result).__qualname__}, "
            f"which cannot be stored as JSON ({exc}); return JSON-compatible data, a "
            "pydantic model or a dataclass"
        ) from exc
    size = json_size(text, limit)
    if size is not None:
        raise StepSerializationError(
            f"step {name!r} returned {size} bytes of JSON; at most {limit} are stored "
            "(max_payload_bytes): store large data elsewhere and return a reference"
        )
    if result is None or type(result) in _JSON_IDENTITY:
        return text, result
    return text, json.loads(text)


class StepLogger:
    """`step.log.info/warn/error(message, data=None)`: emits `log:write`."""

    __slots__ = ("_host",)

    def __init__(self, host: StepHost) -> None:
        self._host = host

    def info(self, message: str, data: Any = None) -> None:
        self._host.log("info", message, data)

    def warn(self, message: str, data: Any = None) -> None:
        self._host.log("warn", message, data)

    warning = warn

    def error(self, message: str, data: Any = None) -> None:
        self._host.log("error", message, data)


class _StepCore:
    __slots__ = ("_host", "log")

    def __init__(self, host: StepHost) -> None:
        self._host = host
        self.log = StepLogger(host)

    @property
    def run_id(self) -> str:
        """The current run's id."""
        return self._host.run_id

    @property
    def job_name(self) -> str:
        """The current run's job name."""
        return self._host.job_name

    @property
    def step_index(self) -> int:
        """The index the next `run` call gets (replayed steps count too)."""
        return self._host.next_index

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Store progress on the run and emit `run:progress`; it survives a resume."""
        self._host.progress(Progress(current, total, message))

    def _begin(self, name: str, fn: Callable[..., Any], returns: Any) -> tuple[int, Any, Any]:
        """(index, return type, replayed value or MISSING) of a step about to run."""
        if not callable(fn):
            raise TypeError(f"step {name!r}: fn must be callable, got {fn!r}")
        index, stored = self._host.begin_step(name)
        tp = returns if returns is not None else _return_type(fn)
        if stored is MISSING:
            return index, tp, MISSING
        value = None if stored is None else json.loads(stored)
        if tp is not MISSING:
            value = _adapter(tp).validate_python(value)
        return index, tp, value

    def _result(self, name: str, tp: Any, result: Any) -> tuple[str, Any]:
        text, value = _to_json(name, result, self._host.max_payload_bytes)
        if tp is not MISSING:
            value = _adapter(tp).validate_python(value)
        return text, value


class StepContext(_StepCore):
    """The `step` argument of a sync job."""

    __slots__ = ()

    def run(self, name: str, fn: Callable[..., T], *args: Any, returns: Any = None) -> T:
        """Run `fn(*args)` once and persist its result; on a resume return the stored result.

        The result passes through JSON both times; a return annotation of `fn` or
        `returns=` validates it back into that type.
        """
        host = self._host
        index, tp, replayed = self._begin(name, fn, returns)
        if replayed is not MISSING:
            return replayed  # type: ignore[no-any-return]
        host.vouch()
        started = host.step_started(index, name)
        try:
            if host.late():  # frozen, or slow listeners, since the check: check again
                host.vouch()
            text, value = self._result(name, tp, fn(*args))
        except BaseException as exc:
            host.step_ended()
            host.step_failed(index, name, exc, started)
            raise
        host.step_ended()
        host.step_completed(index, name, text, value, started)
        return value  # type: ignore[no-any-return]


class AsyncStepContext(_StepCore):
    """The `step` argument of an `async def` job: `await step.run(name, fn)`."""

    __slots__ = ()

    async def run(self, name: str, fn: Callable[..., Any], *args: Any, returns: Any = None) -> Any:
        """Like `StepContext.run`; `fn` may be sync or async."""
        host = self._host
        await host.settle()
        index, tp, replayed = self._begin(name, fn, returns)
        if replayed is not MISSING:
            return replayed
        await asyncio.to_thread(host.vouch)
        started = host.step_started(index, name)
        try:
            if host.late():  # the loop stalled, or slow listeners, since the check
                await asyncio.to_thread(host.vouch)
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
            text, value = self._result(name, tp, result)
        except BaseException as exc:
            host.step_ended()
            await asyncio.to_thread(host.step_failed, index, name, exc, started)
            raise
        host.step_ended()
        await asyncio.to_thread(host.step_completed, index, name, text, value, started)
        return value
