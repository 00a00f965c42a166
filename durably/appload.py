"""Loading a user's jobs from `module:attr` for the command line (`--app`)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .app import Durably
from .errors import DurablyError
from .jobs import JobDefinition


def load_jobs(spec: str) -> dict[str, JobDefinition[Any, Any]]:
    """The job definitions named by `module:attr`.

    `attr` may be a Durably instance (its registered jobs), a mapping of definitions, a
    single definition, an iterable of definitions, or a function returning one of these.
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


def _as_jobs(target: Any, spec: str) -> dict[str, JobDefinition[Any, Any]]:
    if isinstance(target, Durably):
        return {name: target._job_for(name) for name in target._job_names()}
    if isinstance(target, JobDefinition):
        return {target.name: target}
    if isinstance(target, Mapping):
        jobs = dict(target)
    elif callable(target):
        return _as_jobs(target(), spec)
    elif isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
        jobs = {getattr(j, "name", str(i)): j for i, j in enumerate(target)}
    else:
        raise DurablyError(
            f"--app {spec!r} is a {type(target).__name__}; expected a Durably instance, "
            "a JobDefinition, or a mapping or list of them"
        )
    bad = [key for key, job in jobs.items() if not isinstance(job, JobDefinition)]
    if bad:
        raise DurablyError(f"--app {spec!r}: {', '.join(map(repr, bad))} are not JobDefinitions")
    if not jobs:
        raise DurablyError(f"--app {spec!r} holds no jobs")
    return jobs
