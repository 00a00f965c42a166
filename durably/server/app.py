"""`create_app`: the HTTP API of a Durably instance as a Starlette (ASGI) application.

Routes, query names and JSON shapes follow @coji/durably 0.6's `createDurablyHandler`;
status codes deliberately do not (400/404/409 where 0.6 answered 500), see SPEC.md.
What is checked before a request acts (body size, origin, content type) is in `guards`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, cast

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from durably import (
    BaseEvent,
    Durably,
    InputValidationError,
    InvalidRunStateError,
    PayloadTooLargeError,
    Run,
    RunNotFoundError,
    RunStatus,
)
from durably._app import follow_source
from durably._follow import AsyncFollow, follow
from durably._text import MAX_NAME, clean_message

from .dashboard import ASSET_PREFIX, asset, jobs_json, page
from .guards import (
    DEFAULT_MAX_BODY_BYTES,
    HTTPError,
    Origin,
    bad_request,
    bounded_receive,
    check_declared_length,
    check_max_body_bytes,
    check_origin,
    new_error_id,
    non_negative_int,
    parse_trusted_origins,
    require_json,
)
from .sse import EventStream, frames
from .wire import (
    RUN_SUMMARY_TYPES,
    STEP_SUMMARY_TYPES,
    dumps,
    event_json,
    log_json,
    run_json,
    step_json,
    summary_json,
)

logger = logging.getLogger("durably.server")

Authorize = Callable[[Request], "bool | Awaitable[bool]"]
"""`authorize(request)`, sync or async; a falsy result answers 401."""

Handler = Callable[[Request], Awaitable[ASGIApp]]

_RUN_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
_SUMMARY_TYPES = RUN_SUMMARY_TYPES | STEP_SUMMARY_TYPES | {"log:write"}
#: methods that only read: no origin check (a page elsewhere cannot read the answer)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class JSONResponse(_StarletteJSONResponse):
    """Compact JSON where a stored NaN becomes null (Starlette's would raise: a 500)."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _success() -> JSONResponse:
    return JSONResponse({"success": True})


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        bad_request(f"{name} query parameter is required")
    return value


def _optional_key(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        bad_request(f"{name} must be a non-empty string when given, got {value!r}")
    return value


def _reject_constant(name: str) -> NoReturn:
    bad_request(f"malformed JSON body: {name} is not valid JSON")


async def _json_body(request: Request) -> Any:
    try:
        body = await request.body()
    except ClientDisconnect:
        raise HTTPError(400, "the client disconnected before sending the body") from None
    if not body.strip():
        bad_request("a JSON body is required")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise HTTPError(400, f"malformed JSON body: {exc}") from None


class _Api:
    """The request handlers of one Durably instance."""

    def __init__(
        self,
        durably: Durably,
        authorize: Authorize | None,
        max_body_bytes: int,
        trusted: frozenset[Origin],
    ) -> None:
        self.durably = durably
        self.authorize = authorize
        self.max_body_bytes = max_body_bytes
        self.trusted = trusted

    # -- plumbing ----------------------------------------------------------------------

    async def allowed(self, request: Request) -> bool:
        if self.authorize is None:
            return True
        if inspect.iscoroutinefunction(self.authorize):
            result: Any = await self.authorize(request)
        else:
            # a sync hook may do I/O (a session lookup): keep it off the event loop
            result = await run_in_threadpool(self.authorize, request)
            if inspect.isawaitable(result):
                result = await result
        return bool(result)

    async def respond(self, request: Request, handler: Handler | None) -> ASGIApp:
        try:
            check_declared_length(request, self.max_body_bytes)
            if not await self.allowed(request):
                return _error(401, "unauthorized")
            if handler is None:
                return _error(404, f"not found: {request.method} {request.url.path}")
            if request.method not in _SAFE_METHODS:
                check_origin(request, self.trusted)
            return await handler(request)
        except HTTPError as exc:
            return _error(exc.status, exc.message)
        except PayloadTooLargeError as exc:
            return _error(413, str(exc))
        except InputValidationError as exc:
            return _error(400, str(exc))
        except RunNotFoundError:
            return _error(404, "Run not found")  # 0.6's text
        except InvalidRunStateError as exc:
            return _error(409, str(exc))
        except Exception:
            # the detail (SQL, parameters, paths) goes to the log only, under an id
            error_id = new_error_id()
            logger.exception(
                "%s %s failed (errorId %s)", request.method, request.url.path, error_id
            )
            return JSONResponse({"error": "internal error", "errorId": error_id}, 500)

    # -- runs --------------------------------------------------------------------------

    async def trigger(self, request: Request) -> ASGIApp:
        require_json(request)
        body = await _json_body(request)
        if not isinstance(body, dict):
            bad_request("the body must be a JSON object {jobName, input, ...}")
        job_name = body.get("jobName")
        if job_name is None or job_name == "":
            bad_request("jobName is required")
        if not isinstance(job_name, str):
            bad_request(f"jobName must be a string, got {job_name!r}")
        payload = body.get("input")
        idempotency_key = _optional_key(body, "idempotencyKey")
        concurrency_key = _optional_key(body, "concurrencyKey")
        handle = self.durably.get_job(job_name)
        if handle is None:
            # 0.6's text; the name as sent, made encodable and cut (it can be anything)
            raise HTTPError(404, f"Job not found: {clean_message(job_name, MAX_NAME)}")
        run = await handle.trigger_async(
            {} if payload is None else payload,
            idempotency_key=idempotency_key,
            concurrency_key=concurrency_key,
        )
        return JSONResponse({"runId": run.id})

    async def run(self, request: Request) -> ASGIApp:
        run_id = _required(request, "runId")
        data = await asyncio.to_thread(self._run_json, run_id)
        if data is None:
            raise RunNotFoundError(run_id)
        return JSONResponse(data)

    def _run_json(self, run_id: str) -> dict[str, Any] | None:
        run = self.durably.get_run(run_id)
        if run is None:
            return None
        return run_json(run, self._step_count(run))

    def _step_count(self, run: Run) -> int:
        # the public API has no step count; the store's is one cheap COUNT(*)
        return self.durably.count_steps(run.id)

    async def runs(self, request: Request) -> ASGIApp:
        params = request.query_params
        job_names = [name for name in params.getlist("jobName") if name]
        statuses = [status for status in params.getlist("status") if status]
        for status in statuses:
            if status not in _RUN_STATUSES:
                bad_request(f"status must be one of {', '.join(_RUN_STATUSES)}, got {status!r}")
        limit = non_negative_int(request, "limit")
        offset = non_negative_int(request, "offset")

        def load() -> list[dict[str, Any]]:
            runs = self.durably.get_runs(
                job_name=job_names or None,
                status=cast("list[RunStatus]", statuses) or None,
                limit=limit,
                offset=offset,
            )
            return [run_json(run, self._step_count(run)) for run in runs]

        return JSONResponse(await asyncio.to_thread(load))

    async def steps(self, request: Request) -> ASGIApp:
        run_id = _required(request, "runId")
        steps = await self.durably.get_steps_async(run_id)
        return JSONResponse([step_json(step) for step in steps])

    async def logs(self, request: Request) -> ASGIApp:
        run_id = _required(request, "runId")
        logs = await self.durably.get_logs_async(run_id)
        return JSONResponse([log_json(entry) for entry in logs])

    async def jobs(self, request: Request) -> ASGIApp:
        return JSONResponse(jobs_json(self.durably))

    async def retry(self, request: Request) -> ASGIApp:
        await self.durably.retry_async(_required(request, "runId"))
        return _success()

    async def cancel(self, request: Request) -> ASGIApp:
        await self.durably.cancel_async(_required(request, "runId"))
        return _success()

    async def delete(self, request: Request) -> ASGIApp:
        await self.durably.delete_run_async(_required(request, "runId"))
        return _success()

    # -- dashboard ---------------------------------------------------------------------

    async def dashboard_page(self, request: Request) -> ASGIApp:
        return page()

    async def dashboard_asset(self, request: Request) -> ASGIApp:
        response = asset(request.path_params["name"])
        if response is None:
            raise HTTPError(404, f"not found: {request.method} {request.url.path}")
        return response

    # -- streams -----------------------------------------------------------------------

    async def subscribe(self, request: Request) -> ASGIApp:
        """One run's events but run:trigger and worker:error; ends after run:complete or once
        the run is deleted. After run:fail/run:cancel it stays open: a retry may follow, and
        the original's client reports a server-closed stream as a connection error.
        """
        run_id = _required(request, "runId")

        def log_poll_error(exc: Exception) -> None:
            logger.warning("polling run %s for /subscribe failed", run_id, exc_info=exc)

        feed = AsyncFollow(
            follow(
                follow_source(self.durably),
                run_id,
                accept=lambda event: event.type not in ("run:trigger", "worker:error"),
                ends=frozenset({"run:complete"}),
                on_read_error=log_poll_error,
            )
        )
        await feed.settle(block=False)  # an unknown run raises RunNotFoundError: a 404
        return EventStream(frames(feed, event_json), feed.close)

    async def runs_subscribe(self, request: Request) -> ASGIApp:
        job_name = request.query_params.get("jobName") or None

        def accept(event: BaseEvent) -> bool:
            if event.type not in _SUMMARY_TYPES:
                return False
            if job_name is None:
                return True
            # log:write has no job name: with a filter it cannot be matched, so it is left out
            return event.type != "log:write" and getattr(event, "job_name", None) == job_name

        feed = AsyncFollow(follow(follow_source(self.durably), None, accept=accept))
        return EventStream(frames(feed, summary_json), feed.close)


class _Endpoint:
    """One path of the API. It matches every method, so an unknown one gets 404, not 405."""

    def __init__(self, api: _Api, handlers: Mapping[str, Handler]) -> None:
        self._api = api
        self._handlers = dict(handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, bounded_receive(receive, self._api.max_body_bytes))
        response = await self._api.respond(request, self._handlers.get(request.method))
        await response(scope, receive, send)


def create_app(
    durably: Durably,
    authorize: Authorize | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    trusted_origins: Sequence[str] = (),
) -> Starlette:
    """The HTTP API of `durably` as an ASGI app, mountable under any prefix.

    Its root (`GET /`) serves the dashboard, a page that uses the API with relative URLs.
    `authorize(request)` (sync or async) runs before every request, streams included;
    a falsy result answers 401. A request body over `max_body_bytes` answers 413 without
    being read. POST/DELETE requests that a browser sent from another origin answer 403
    (CSRF), unless that origin (`"https://host[:port]"`) is in `trusted_origins`.
    """
    api = _Api(
        durably,
        authorize,
        check_max_body_bytes(max_body_bytes),
        parse_trusted_origins(trusted_origins),
    )
    routes = {
        "/trigger": {"POST": api.trigger},
        "/run": {"GET": api.run, "DELETE": api.delete},
        "/runs": {"GET": api.runs},
        "/steps": {"GET": api.steps},
        "/subscribe": {"GET": api.subscribe},
        "/runs/subscribe": {"GET": api.runs_subscribe},
        "/retry": {"POST": api.retry},
        "/cancel": {"POST": api.cancel},
        # additions to the original's routes: the dashboard and what only it needs
        "/logs": {"GET": api.logs},
        "/jobs": {"GET": api.jobs},
        "/": {"GET": api.dashboard_page},
        ASSET_PREFIX + "/{name}": {"GET": api.dashboard_asset},
    }
    app = Starlette(
        routes=[
            # an ASGI endpoint (not a function) leaves `methods` None: every method matches
            Route(path, _Endpoint(api, handlers))
            for path, handlers in routes.items()
        ]
    )
    # a path the table does not have is 404 JSON; "/runs/" is not "/runs" (no redirect)
    app.router.redirect_slashes = False
    app.router.default = _Endpoint(api, {})
    return app


__all__ = ["Authorize", "create_app"]
