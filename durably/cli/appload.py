"""Loading a user's jobs from `module:attr` for the command line (`--app`)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from .._app import Durably
from .._errors import DurablyError
from .._jobs import JobDefinition


def load_jobs(spec: str) -> dict[str, JobDefinition[Any, Any]]:
    """The job definitions named by `module:attr`.

    `attr` (dotted for nested attributes) may be a Durably instance (its registered jobs),
    a mapping of definitions (keys as in `register`), a single definition, a list of
    definitions (keyed by job name), or a function returning one of these. Anything else
    is a `DurablyError` that says what was found.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise DurablyError(f"--app must look like module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, find modules in the current dir
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DurablyError(f"cannot import {module_name!r} for --app {spec!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise DurablyError(
                f"{module_name!r} has no attribute {attr!r} (--app {spec!r})"
            ) from None
    return _as_jobs(target, spec)


def _as_jobs(target: Any, spec: str, *, called: bool = False) -> dict[str, JobDefinition[Any, Any]]:
    if isinstance(target, Durably):
        handles = [target.jobs[key] for key in target.jobs]
        jobs = {handle.name: handle.definition for handle in handles}
    elif isinstance(target, JobDefinition):
        jobs = {target.name: target}
    elif isinstance(target, Mapping):
        jobs = dict(target)
    elif isinstance(target, (list, tuple, set, frozenset)):
        jobs = {getattr(job, "name", None) or f"item {i}": job for i, job in enumerate(target)}
    elif callable(target) and not isinstance(target, type) and not called:
        # a factory: `--app myapp:make_jobs`; what it returns must be one of the above
        return _as_jobs(target(), spec, called=True)
    else:
        what = "returns" if called else "is"
        raise DurablyError(
            f"--app {spec!r} {what} {_describe(target)}; expected a Durably instance, "
            "a JobDefinition, a dict or list of them, or a function returning one of these"
        )
    bad = [
        f"{key!r} ({_describe(job)})"
        for key, job in jobs.items()
        if not isinstance(job, JobDefinition)
    ]
    if bad:
        raise DurablyError(
            f"--app {spec!r}: not job definitions (made with define_job): {', '.join(bad)}"
        )
    if not jobs:
        raise DurablyError(f"--app {spec!r} holds no jobs")
    return jobs


def _describe(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__}"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
