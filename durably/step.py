"""`StepContext`: what a job function uses to run persisted steps, report progress and log.

The sync and async flavours share one implementation (`_StepCore`); the async one only
awaits the step function when it returns an awaitable.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError, to_json

from .errors import DuplicateStepError, StepSerializationError
from .events import Progress

if TYPE_CHECKING:
    from .execution import RunExecution

T = TypeVar("T")

_MISSING: Any = object()
_adapters: dict[Any, TypeAdapter[Any]] = {}
_hint_cache: dict[tuple[Any, str], Any] = {}


class RunInterrupted(BaseException):
    """Stops a job at a step boundary: the run was cancelled, released or lost its lease.

    A BaseException so that a job's `except Exception` cannot swallow it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreFailure(BaseException):
    """The database failed while persisting a step; the run is left for stale recovery."""


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
        return _MISSING
    hint = annotations["return"]
    if isinstance(hint, str):
        key = (getattr(fn, "__code__", fn), hint)
        resolved = _hint_cache.get(key, _MISSING)
        if resolved is _MISSING:
            resolved = typing.get_type_hints(fn).get("return", _MISSING)
            _hint_cache[key] = resolved
        hint = resolved
    if hint is _MISSING:
        return _MISSING
    if inspect.iscoroutinefunction(fn):
        return hint
    origin = typing.get_origin(hint)
    if origin in (Awaitable, typing.Coroutine) or (
        isinstance(origin, type) and issubclass(origin, Awaitable)
    ):
        args = typing.get_args(hint)
        return args[-1] if args else _MISSING
    return hint


class StepLogger:
    """`step.log.info/warn/error(message, data=None)`: emits `log:write`."""

    __slots__ = ("_ex",)

    def __init__(self, execution: RunExecution) -> None:
        self._ex = execution

    def info(self, message: str, data: Any = None) -> None:
        self._ex.log("info", message, data)

    def warn(self, message: str, data: Any = None) -> None:
        self._ex.log("warn", message, data)

    warning = warn

    def error(self, message: str, data: Any = None) -> None:
        self._ex.log("error", message, data)


class _StepCore:
    __slots__ = ("_ex", "log")

    def __init__(self, execution: RunExecution) -> None:
        self._ex = execution
        self.log = StepLogger(execution)

    @property
    def run_id(self) -> str:
        """The current run's id."""
        return self._ex.lease.run_id

    @property
    def job_name(self) -> str:
        """The current run's job name."""
        return self._ex.lease.job_name

    @property
    def step_index(self) -> int:
        """The index the next `run` call gets (replayed steps count too)."""
        return self._ex.next_index

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Store progress on the run and emit `run:progress`; it survives a resume."""
        self._ex.progress(Progress(current, total, message))

    def _begin(self, name: str, fn: Callable[..., Any], returns: Any) -> tuple[int, Any, Any]:
        """Check the boundary and the name; returns (index, return type, replayed value)."""
        ex = self._ex
        ex.check_boundary()
        if not isinstance(name, str) or not name:
            raise TypeError(f"a step name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise TypeError(f"step {name!r}: fn must be callable, got {fn!r}")
        if name in ex.seen:
            ex.failed_step = name
            raise DuplicateStepError(ex.lease.run_id, name)
        ex.seen.add(name)
        index = ex.next_index
        ex.next_index = index + 1
        tp = returns if returns is not None else _return_type(fn)
        stored = ex.completed.get(name, _MISSING)
        if stored is _MISSING:
            return index, tp, _MISSING
        value = None if stored is None else json.loads(stored)
        if tp is not _MISSING:
            value = _adapter(tp).validate_python(value)
        return index, tp, value

    def _to_json(self, name: str, result: Any) -> tuple[str, Any]:
        try:
            text = to_json(result).decode()
        except (PydanticSerializationError, TypeError, ValueError) as exc:
            raise StepSerializationError(
                f"step {name!r} returned a {type(result).__module__}.{type(result).__qualname__}, "
                f"which cannot be stored as JSON ({exc}); return JSON-compatible data, a "
                "pydantic model or a dataclass"
            ) from exc
        # the JSON round trip of these is the identity (not of floats: NaN becomes null)
        if result is None or type(result) in _JSON_IDENTITY:
            return text, result
        return text, json.loads(text)

    def _complete(self, index: int, name: str, tp: Any, result: Any, started: Any) -> Any:
        try:
            text, value = self._to_json(name, result)
            if tp is not _MISSING:
                value = _adapter(tp).validate_python(value)
        except Exception as exc:
            self._ex.step_failed(index, name, exc, started)
            raise
        self._ex.step_completed(index, name, text, started)
        return value


_JSON_IDENTITY = (str, int, bool)


class StepContext(_StepCore):
    """The `step` argument of a sync job."""

    __slots__ = ()

    def run(self, name: str, fn: Callable[[], T], *, returns: Any = None) -> T:
        """Run `fn` once and persist its result; on a resume return the stored result.

        The result passes through JSON both times; a return annotation of `fn` or
        `returns=` validates it back into that type.
        """
        index, tp, replayed = self._begin(name, fn, returns)
        if replayed is not _MISSING:
            return replayed  # type: ignore[no-any-return]
        started = self._ex.step_started(index, name)
        try:
            result = fn()
        except BaseException as exc:
            self._ex.step_failed(index, name, exc, started)
            raise
        finally:
            self._ex.current_step = None
        return self._complete(index, name, tp, result, started)  # type: ignore[no-any-return]


class AsyncStepContext(_StepCore):
    """The `step` argument of an `async def` job: `await step.run(name, fn)`."""

    __slots__ = ()

    async def run(self, name: str, fn: Callable[[], Any], *, returns: Any = None) -> Any:
        """Like `StepContext.run`; `fn` may be sync or async."""
        index, tp, replayed = self._begin(name, fn, returns)
        if replayed is not _MISSING:
            return replayed
        started = self._ex.step_started(index, name)
        try:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            self._ex.step_failed(index, name, exc, started)
            raise
        finally:
            self._ex.current_step = None
        return self._complete(index, name, tp, result, started)
