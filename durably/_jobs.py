"""`define_job`, `JobDefinition` and the validation of payloads and outputs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_json

from ._errors import DurablyError, InputValidationError
from ._text import name_problem

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741

JobFunction = Callable[..., Any]


@dataclass(frozen=True, eq=False)
class JobDefinition(Generic[I, O]):
    """A job: its name, input/output types and the function that runs it.

    Definitions are plain values; `Durably.register` binds them to an instance.
    """

    name: str
    fn: JobFunction
    input: Any = None
    output: Any = None
    input_adapter: TypeAdapter[Any] = field(repr=False, default_factory=lambda: TypeAdapter(Any))
    output_adapter: TypeAdapter[Any] | None = field(repr=False, default=None)
    is_async: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the job function directly (handy in unit tests of the job itself)."""
        return self.fn(*args, **kwargs)

    def validate_input(self, value: Any) -> Any:
        """The validated payload, or InputValidationError."""
        try:
            return self.input_adapter.validate_python(value)
        except ValidationError as exc:
            raise InputValidationError(
                f"invalid input for job {self.name!r}: {exc}", exc.errors(include_url=False)
            ) from exc

    def dump_input(self, value: Any) -> Any:
        """The JSON form of a validated payload, as stored."""
        try:
            return self.input_adapter.dump_python(value, mode="json")
        except (PydanticSerializationError, ValueError, TypeError) as exc:
            raise InputValidationError(
                f"input for job {self.name!r} cannot be stored as JSON: {exc}",
                [{"type": "serialization", "msg": str(exc)}],
            ) from exc

    def input_json(self, value: Any) -> str:
        """The stored JSON text of a validated payload."""
        data = self.dump_input(value)
        try:
            return to_json(data).decode()
        except (PydanticSerializationError, ValueError, TypeError) as exc:
            raise InputValidationError(
                f"input for job {self.name!r} cannot be stored as JSON: {exc}",
                [{"type": "serialization", "msg": str(exc)}],
            ) from exc

    def validate_output(self, value: Any) -> Any:
        """The output validated into the output type (as is when there is none)."""
        if self.output_adapter is None:
            return value
        return self.output_adapter.validate_python(value)

    def dump_output(self, value: Any) -> Any:
        """The JSON form of an output."""
        if self.output_adapter is None:
            from pydantic_core import to_jsonable_python

            return to_jsonable_python(value)
        return self.output_adapter.dump_python(value, mode="json")

    def same_as(self, other: JobDefinition[Any, Any]) -> bool:
        """Whether two definitions describe the same job (same name, function and types)."""
        return self is other or (
            self.name == other.name
            and self.fn is other.fn
            and self.input == other.input
            and self.output == other.output
        )


def _build(name: str, input: Any, output: Any, fn: JobFunction) -> JobDefinition[Any, Any]:
    if not isinstance(name, str) or not name.strip():
        raise DurablyError(f"a job name must be a non-empty string, got {name!r}")
    problem = name_problem(name)
    if problem is not None:
        raise DurablyError(f"job name {name!r} {problem}")
    if not callable(fn):
        raise DurablyError(f"job {name!r}: run must be callable, got {fn!r}")
    input_type = Any if input is None else input
    try:
        input_adapter: TypeAdapter[Any] = TypeAdapter(input_type)
        output_adapter: TypeAdapter[Any] | None = None if output is None else TypeAdapter(output)
    except Exception as exc:
        raise DurablyError(f"job {name!r}: input/output types are not usable: {exc}") from exc
    return JobDefinition(
        name=name,
        fn=fn,
        input=input,
        output=output,
        input_adapter=input_adapter,
        output_adapter=output_adapter,
        is_async=inspect.iscoroutinefunction(fn),
    )


@overload
def define_job(
    *, name: str, input: Any = None, output: Any = None, run: None = None
) -> Callable[[JobFunction], JobDefinition[Any, Any]]: ...


@overload
def define_job(
    *, name: str, input: Any = None, output: Any = None, run: JobFunction
) -> JobDefinition[Any, Any]: ...


def define_job(
    *, name: str, input: Any = None, output: Any = None, run: JobFunction | None = None
) -> JobDefinition[Any, Any] | Callable[[JobFunction], JobDefinition[Any, Any]]:
    """Define a job: `@define_job(name=..., input=...)` or `define_job(..., run=fn)`.

    `input` and `output` accept anything pydantic's TypeAdapter accepts. The function
    gets `(step, payload)` and may be `def` or `async def`.
    """
    if run is not None:
        return _build(name, input, output, run)

    def decorator(fn: JobFunction) -> JobDefinition[Any, Any]:
        return _build(name, input, output, fn)

    return decorator
