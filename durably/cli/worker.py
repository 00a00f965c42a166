"""The long-running commands: `durably worker` and `durably serve` (HTTP API + worker).

Both stop gracefully on SIGTERM/SIGINT: no new claims, then the runs in flight get
`--grace` seconds before they are released back to pending at their next step boundary;
a second signal releases them at once, a third exits on the spot (see `stopping`).
`serve` mounts `create_app` (the HTTP API and its dashboard) under `/api` (clients:
`api: "/api"`), so that `/` stays free for whatever an application adds next to it, and
puts `guard.ServeGuard` in front (Host check, basic auth from the environment).
Both persist `step.log` lines unless told not to: a command-line user has no other way
to install `with_log_persistence()`, and `durably run URL ID` is where logs are read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .._app import Durably, create_durably
from .._dialect import redact_url
from .._errors import DurablyError, StoreError
from .._events import RunCompleteEvent, RunFailEvent, RunStartEvent, WorkerErrorEvent
from ..plugins import with_log_persistence
from .appload import load_jobs
from .args import database_url, port_number, positive, positive_seconds, seconds
from .db import sqlite_path
from .guard import (
    PASSWORD_ENV,
    USER_ENV,
    Credentials,
    ServeGuard,
    allowed_host,
    allowed_hosts,
    credentials_from_env,
    exposure_warning,
    is_loopback,
)
from .stopping import InFlight, StopSignals, stopped_line

if TYPE_CHECKING:
    from starlette.types import ASGIApp

API_PREFIX = "/api"
SERVER_EXTRA_HINT = "pip install 'durably[server]'"
# how the core's StoreError says that durably's tables are missing (run migrate() first)
MISSING_TABLES = "durably's tables are not in"
# How long uvicorn waits for open connections on shutdown: SSE streams never end by
# themselves, so waiting longer only delays the stop.
HTTP_SHUTDOWN_SECONDS = 5


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `worker` and `serve` share."""
    parser.add_argument(
        "url",
        type=database_url,
        help="database URL shared by every worker (a plain file path is a SQLite file)",
    )
    parser.add_argument(
        "--app",
        required=True,
        metavar="MODULE:ATTR",
        help="where the jobs are: a Durably instance, a JobDefinition, a dict/list of "
        "them, or a function returning one; MODULE is imported from the current directory "
        "too",
    )
    parser.add_argument(
        "--concurrency",
        type=positive,
        default=1,
        metavar="N",
        help="runs executed at once (max_concurrent_runs; default: %(default)s)",
    )
    for option, default, what in (
        ("--polling-interval", 1.0, "between polls when idle"),
        ("--heartbeat-interval", 5.0, "between heartbeats of a run in flight"),
        ("--stale-threshold", 30.0, "without heartbeat before a run is taken back"),
    ):
        parser.add_argument(
            option,
            type=positive_seconds,
            default=default,
            metavar="SECONDS",
            help=f"seconds {what} (default: %(default)s)",
        )
    parser.add_argument(
        "--grace",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, wait this long for runs in flight, then release them "
        "back to pending at their next step boundary; a second signal releases them at "
        "once (default: %(default)s)",
    )
    parser.add_argument(
        "--no-migrate", action="store_true", help="do not create/upgrade the tables at start"
    )
    parser.add_argument(
        "--no-log-persistence",
        action="store_true",
        help="do not store step.log lines in the database (`durably run URL ID` shows them)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no line per run started, completed or failed"
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """`worker`'s options plus where to listen."""
    add_worker_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--port", type=port_number, default=8000, help="default: %(default)s")
    parser.add_argument(
        "--allowed-host",
        action="append",
        type=allowed_host,
        default=[],
        metavar="NAME",
        help="also accept requests whose Host header names NAME (repeatable; '*' accepts "
        "any); --host, localhost, 127.0.0.1 and [::1] are always accepted, other names get "
        "400 (against DNS rebinding)",
    )
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="serve the API only; runs are executed by `durably worker` elsewhere",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        help="uvicorn's log level (default: %(default)s)",
    )
    parser.epilog = (
        f"authentication:\n  set {USER_ENV} and {PASSWORD_ENV} in the environment to\n"
        "  require HTTP basic auth on every request (the password stays off the command line)"
        + (f"\n\n{parser.epilog}" if parser.epilog else "")
    )


def _say(message: str, *, error: bool = False) -> None:
    print(message, file=sys.stderr if error else sys.stdout, flush=True)


def _report_runs(durably: Durably) -> None:
    """A line per run that starts, completes or fails in this process, and per worker error."""

    def on_start(event: RunStartEvent) -> None:
        _say(f"run {event.run_id} {event.job_name}: started")

    def on_complete(event: RunCompleteEvent) -> None:
        _say(f"run {event.run_id} {event.job_name}: completed in {event.duration:.2f} s")

    def on_fail(event: RunFailEvent) -> None:
        where = f" at step {event.failed_step_name!r}" if event.failed_step_name else ""
        _say(f"run {event.run_id} {event.job_name}: failed{where}: {event.error}")

    def on_worker_error(event: WorkerErrorEvent) -> None:
        run = f" (run {event.run_id})" if event.run_id else ""
        _say(f"worker error in {event.context}{run}: {event.error}", error=True)

    durably.on("run:start", on_start)
    durably.on("run:complete", on_complete)
    durably.on("run:fail", on_fail)
    durably.on("worker:error", on_worker_error)


def _open(args: argparse.Namespace) -> Durably:
    durably = create_durably(
        args.url,
        polling_interval=args.polling_interval,
        heartbeat_interval=args.heartbeat_interval,
        stale_threshold=args.stale_threshold,
        max_concurrent_runs=args.concurrency,
    )
    if not args.no_log_persistence:
        durably.use(with_log_persistence())
    if not args.quiet:
        _report_runs(durably)
    return durably


def _prepare(durably: Durably, args: argparse.Namespace) -> None:
    """Migrate the tables, or with `--no-migrate` make sure they are there: a worker
    without them would only fail every claim, forever. A database that cannot be reached
    yet is left to the worker, which retries."""
    if not args.no_migrate:
        durably.migrate()
        return
    url = redact_url(args.url)
    path = sqlite_path(args.url)
    if path is not None and not Path(path).exists():
        raise DurablyError(f"no database at {path!r} (`durably migrate {url}` creates it)")
    try:
        durably.get_runs(limit=1)
    except StoreError as exc:
        if MISSING_TABLES not in str(exc):
            _say(f"the database does not answer yet ({exc}); the worker retries", error=True)
            return
        raise DurablyError(
            f"durably's tables are not in {url}: run `durably migrate {url}` first"
        ) from None


def _jobs_text(jobs: Mapping[str, object]) -> str:
    return f"{'job' if len(jobs) == 1 else 'jobs'} {', '.join(sorted(jobs))}"


def worker(args: argparse.Namespace) -> int:
    """Run a worker for the jobs of `--app` until SIGTERM/SIGINT, then stop gracefully."""
    jobs = load_jobs(args.app)
    signals = StopSignals()
    signals.install()
    with _open(args) as durably:
        _prepare(durably, args)
        durably.register(jobs)
        in_flight = InFlight(durably)
        durably.start()
        _say(
            f"durably worker on {redact_url(args.url)}: {_jobs_text(jobs)}; "
            f"concurrency {args.concurrency}; SIGTERM or Ctrl-C stops it"
        )
        signals.requested.wait()
        signals.stop(durably, args.grace, _say)
        released = in_flight.released()
    _say(stopped_line(released))
    return 0


def build_app(
    durably: Durably,
    hosts: frozenset[str] | None = None,
    credentials: Credentials | None = None,
) -> ASGIApp:
    """What `serve` serves: `create_app` under `/api`; `/` redirects to its dashboard; in
    front, the Host check of `hosts` (None: any) and basic auth with `credentials`.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import RedirectResponse
    from starlette.routing import Mount, Route

    from ..server import create_app

    async def index(request: Request) -> RedirectResponse:
        # the dashboard reaches the API with relative URLs: it needs the trailing slash
        return RedirectResponse(f"{API_PREFIX}/")

    app = Starlette(routes=[Route("/", index), Mount(API_PREFIX, app=create_app(durably))])
    return ServeGuard(app, hosts=hosts, credentials=credentials)


def _check_server_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise DurablyError(
            f"`durably serve` needs the server extra ({exc.name} is not installed): "
            f"{SERVER_EXTRA_HINT}"
        ) from None


def serve(args: argparse.Namespace) -> int:
    """Migrate, register, start the worker, serve until SIGTERM/SIGINT, then stop it."""
    _check_server_extra()
    import uvicorn

    credentials = credentials_from_env()
    jobs = load_jobs(args.app)
    servers: list[uvicorn.Server] = []

    def stop() -> None:
        # uvicorn has its own handlers while it serves; this covers the setup before it
        # and the drain after (uvicorn raises the signals it caught again when it returns)
        for server in servers:
            server.should_exit = True

    signals = StopSignals(stop)
    signals.install()
    released: list[str] = []
    with _open(args) as durably:
        _prepare(durably, args)
        durably.register(jobs)
        in_flight = InFlight(durably)
        config = uvicorn.Config(
            build_app(durably, allowed_hosts(args.host, args.allowed_host), credentials),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=HTTP_SHUTDOWN_SECONDS,
        )
        servers.append(uvicorn.Server(config))
        if not args.no_worker:
            durably.start()
        runs_by = "no worker" if args.no_worker else f"worker concurrency {args.concurrency}"
        if credentials is None and not is_loopback(args.host):
            _say(exposure_warning(args.host, args.port), error=True)
        auth = "no authentication" if credentials is None else f"basic auth as {credentials.user!r}"
        _say(
            f"durably serve on {redact_url(args.url)}: {_jobs_text(jobs)}; "
            f"{runs_by}; dashboard and API at http://{args.host}:{args.port}{API_PREFIX}/; "
            f"{auth}; SIGTERM or Ctrl-C stops it"
        )
        try:
            if not signals.requested.is_set():
                servers[0].run()
        except SystemExit as exc:  # how uvicorn ends a failed startup (port in use, ...)
            raise DurablyError(
                f"could not serve on {args.host}:{args.port}: uvicorn exited with status "
                f"{exc.code} (its log above says why)"
            ) from None
        finally:
            if not args.no_worker:
                signals.stop(durably, args.grace, _say)
                released = in_flight.released()
    _say(stopped_line(released))
    return 0
