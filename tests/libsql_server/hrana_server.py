"""A small Hrana server over one SQLite file, for durably's libSQL tests.

No real sqld can be installed where the tests run, so this server speaks the parts of the
Hrana protocol that `libsql-client` and the official `libsql` driver use, on top of real
SQLite (through APSW, which exposes what Hrana needs: statement description without
execution, primary error codes, the autocommit state):

- HTTP v1: `POST /v1/execute`, `POST /v1/batch` (each request is a fresh stream)
- HTTP v2/v3: `POST /v2/pipeline`, `POST /v3/pipeline` (streams tied together by batons),
  `POST /v3/cursor` (newline-delimited JSON entries)
- WebSocket, subprotocols `hrana2` and `hrana1`: hello, open_stream, close_stream, execute,
  batch, sequence, describe, store_sql, close_sql, get_autocommit

Every stream owns its own SQLite connection, so transactions, locks and errors are
SQLite's own. Errors are `{"message", "code"}` with sqld's codes (`SQLITE_CONSTRAINT`,
`STREAM_EXPIRED`, `ARGS_INVALID`, ...). HTTP streams idle for longer than
`--stream-expiry` seconds are rolled back and closed, and their baton then answers
`STREAM_EXPIRED`, as sqld does. With `--auth-token`, requests must carry that token
(`Authorization: Bearer ...` over HTTP, the `jwt` of `hello` over WebSocket).

Run: python hrana_server.py --db PATH [--port 0] [--auth-token T] [--stream-expiry 10]
It prints `LISTENING <port>` once it accepts connections. `GET /_test/stats` returns
counters that tests use to see which endpoints a driver used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apsw
import apsw.ext
from aiohttp import WSMsgType, web

Json = dict[str, Any]


class HranaError(Exception):
    """An error reported to the client as a Hrana `Error` structure."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def proto(self) -> Json:
        return {"message": self.message, "code": self.code}


class HttpError(Exception):
    """An error answered with an HTTP status: JSON `Error` or plain text."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def response(self) -> web.Response:
        if self.code is None:
            return web.Response(status=self.status, text=self.message)
        return web.json_response({"message": self.message, "code": self.code}, status=self.status)


# -- values ---------------------------------------------------------------------------


def value_from_proto(value: Json) -> Any:
    kind = value.get("type")
    if kind == "null":
        return None
    if kind == "integer":
        return int(value["value"])
    if kind == "float":
        return float(value["value"])
    if kind == "text":
        return str(value["value"])
    if kind == "blob":
        data = value["base64"]
        return base64.b64decode(data + "=" * (-len(data) % 4))
    raise HranaError(f"unknown value type {kind!r}", "ARGS_INVALID")


def value_to_proto(value: Any) -> Json:
    if value is None:
        return {"type": "null"}
    if isinstance(value, int):
        return {"type": "integer", "value": str(value)}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, str):
        return {"type": "text", "value": value}
    # the Rust driver decodes blobs strictly without padding
    return {"type": "blob", "base64": base64.b64encode(bytes(value)).decode().rstrip("=")}


def sqlite_error(exc: apsw.Error) -> HranaError:
    if isinstance(exc, apsw.BindingsError):
        return HranaError(f"Arguments do not match SQL parameters: {exc}", "ARGS_INVALID")
    result = getattr(exc, "result", None)
    code = apsw.mapping_result_codes.get(result, "SQLITE_UNKNOWN") if result else "SQLITE_UNKNOWN"
    return HranaError(f"SQLite error: {exc}", code)


# -- one stream: a SQLite connection and its stored SQL texts ----------------------------


class SqlStream:
    """The SQL side of a Hrana stream. Its methods block: call them from a worker thread."""

    def __init__(self, db_path: str, sqls: dict[int, str] | None = None) -> None:
        self.db_path = db_path
        self.sqls = sqls if sqls is not None else {}
        self._conn: apsw.Connection | None = None

    def connection(self) -> apsw.Connection:
        if self._conn is None:
            conn = apsw.Connection(self.db_path)
            conn.set_busy_timeout(10_000)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()

    def is_autocommit(self) -> bool:
        return self._conn is None or not self._conn.in_transaction

    def _sql_of(self, holder: Json) -> str:
        sql, sql_id = holder.get("sql"), holder.get("sql_id")
        if (sql is None) == (sql_id is None):
            raise HranaError("exactly one of 'sql' and 'sql_id' must be given", "SQL_INVALID")
        if sql_id is not None:
            try:
                return self.sqls[int(sql_id)]
            except KeyError:
                raise HranaError(f"SQL text {sql_id} is not stored", "SQL_NOT_FOUND") from None
        return str(sql)

    def _query_info(self, sql: str) -> Any:
        try:
            info = apsw.ext.query_info(self.connection(), sql)
        except apsw.Error as exc:
            raise sqlite_error(exc) from exc
        if not info.first_query.strip():
            raise HranaError("SQL string does not contain any statement", "SQL_NO_STATEMENT")
        if info.query_remaining and info.query_remaining.strip(" \t\r\n;"):
            raise HranaError("SQL string contains more than one statement", "SQL_MANY_STATEMENTS")
        return info

    def execute(self, stmt: Json) -> Json:
        sql = self._sql_of(stmt)
        args = [value_from_proto(v) for v in stmt.get("args") or []]
        named = stmt.get("named_args") or []
        if args and named:
            raise HranaError(
                "Specifying both positional and named arguments is not supported",
                "ARGS_BOTH_POSITIONAL_AND_NAMED",
            )
        bindings: Any = (
            {a["name"].lstrip(":@$"): value_from_proto(a["value"]) for a in named}
            if named
            else tuple(args)
        )
        info = self._query_info(sql)
        conn = self.connection()
        before = conn.total_changes()
        try:
            rows = [list(row) for row in conn.cursor().execute(info.first_query, bindings)]
        except apsw.Error as exc:
            raise sqlite_error(exc) from exc
        want_rows = stmt.get("want_rows", True) is not False
        return {
            "cols": [{"name": name, "decltype": decl} for name, decl in info.description],
            "rows": [[value_to_proto(v) for v in row] for row in rows] if want_rows else [],
            "affected_row_count": conn.total_changes() - before,
            "last_insert_rowid": str(conn.last_insert_rowid()),
            "rows_read": 0,
            "rows_written": 0,
            "query_duration_ms": 0.0,
        }

    def batch(self, batch: Json) -> Json:
        steps = batch.get("steps") or []
        results: list[Json | None] = [None] * len(steps)
        errors: list[Json | None] = [None] * len(steps)
        outcome: list[str | None] = [None] * len(steps)
        for i, step in enumerate(steps):
            condition = step.get("condition")
            if condition is not None and not self._holds(condition, outcome, i):
                continue
            try:
                results[i] = self.execute(step["stmt"])
                outcome[i] = "ok"
            except HranaError as exc:
                errors[i] = exc.proto()
                outcome[i] = "error"
        return {"step_results": results, "step_errors": errors}

    def _holds(self, cond: Json, outcome: list[str | None], current: int) -> bool:
        kind = cond.get("type")
        if kind in ("ok", "error"):
            step = int(cond["step"])
            if not 0 <= step < current:
                raise HranaError(f"condition refers to step {step}", "BATCH_COND_INVALID")
            return outcome[step] == kind
        if kind == "not":
            return not self._holds(cond["cond"], outcome, current)
        if kind == "and":
            return all(self._holds(c, outcome, current) for c in cond["conds"])
        if kind == "or":
            return any(self._holds(c, outcome, current) for c in cond["conds"])
        if kind == "is_autocommit":
            return self.is_autocommit()
        raise HranaError(f"unknown batch condition {kind!r}", "BATCH_COND_INVALID")

    def sequence(self, request: Json) -> None:
        sql = self._sql_of(request)
        try:
            self.connection().execute(sql)
        except apsw.Error as exc:
            raise sqlite_error(exc) from exc

    def describe(self, request: Json) -> Json:
        info = self._query_info(self._sql_of(request))
        return {
            "params": [{"name": name} for name in info.bindings_names],
            "cols": [{"name": name, "decltype": decl} for name, decl in info.description],
            "is_explain": bool(info.is_explain),
            "is_readonly": bool(info.is_readonly),
        }

    def store_sql(self, request: Json) -> None:
        self.sqls[int(request["sql_id"])] = str(request["sql"])

    def close_sql(self, request: Json) -> None:
        self.sqls.pop(int(request["sql_id"]), None)

    def stream_request(self, request: Json, version: int) -> Json:
        """One request of a pipeline or a WebSocket stream; returns its response."""
        kind = request.get("type")
        if kind == "execute":
            return {"type": kind, "result": self.execute(request["stmt"])}
        if kind == "batch":
            return {"type": kind, "result": self.batch(request["batch"])}
        if kind == "sequence":
            self.sequence(request)
            return {"type": kind}
        if kind == "describe":
            return {"type": kind, "result": self.describe(request)}
        if kind == "store_sql":
            self.store_sql(request)
            return {"type": kind}
        if kind == "close_sql":
            self.close_sql(request)
            return {"type": kind}
        if kind == "get_autocommit" and version >= 3:
            return {"type": kind, "is_autocommit": self.is_autocommit()}
        raise HranaError(f"request {kind!r} is not supported here", "NOT_SUPPORTED")


# -- HTTP streams and batons -----------------------------------------------------------


class HttpStream:
    """A stream of Hrana over HTTP: reached through a baton, expired when idle."""

    def __init__(self, db_path: str) -> None:
        self.id = secrets.token_hex(12)
        self.seq = secrets.randbelow(1 << 30)
        self.sql = SqlStream(db_path)
        self.state = "acquired"  # acquired | available | expired
        self.last_used = time.monotonic()
        self.closed = False


class Server:
    """The Hrana endpoints over one SQLite file."""

    def __init__(self, db_path: str, auth_token: str | None, stream_expiry: float) -> None:
        self.db_path = db_path
        self.auth_token = auth_token
        self.stream_expiry = stream_expiry
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="hrana-sql")
        self.streams: dict[str, HttpStream] = {}
        self.stats: collections.Counter[str] = collections.Counter()

    async def run_sql(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    # auth

    def check_http_auth(self, request: web.Request) -> None:
        if self.auth_token is None:
            return
        if request.headers.get("Authorization", "") != f"Bearer {self.auth_token}":
            self.stats["auth_rejected"] += 1
            raise HttpError(401, "Authentication failed: bad or missing token", "UNAUTHORIZED")

    # batons

    def acquire(self, baton: str | None) -> HttpStream:
        if baton is None:
            stream = HttpStream(self.db_path)
            self.streams[stream.id] = stream
            self.stats["streams_opened"] += 1
            return stream
        stream_id, _, seq = baton.partition(".")
        stream = self.streams.get(stream_id)
        if stream is None:
            raise HttpError(400, f"The baton {baton!r} is invalid")
        if stream.state == "expired":
            self.stats["expired_baton_used"] += 1
            raise HttpError(400, "The stream has expired due to inactivity", "STREAM_EXPIRED")
        if stream.state == "acquired" or seq != str(stream.seq):
            raise HttpError(400, f"The baton {baton!r} has already been used")
        stream.state = "acquired"
        return stream

    def release(self, stream: HttpStream) -> str | None:
        if stream.closed:
            self.streams.pop(stream.id, None)
            return None
        stream.seq += 1
        stream.state = "available"
        stream.last_used = time.monotonic()
        return f"{stream.id}.{stream.seq}"

    async def close_stream(self, stream: HttpStream) -> None:
        stream.closed = True
        await self.run_sql(stream.sql.close)

    async def expire_idle_streams(self) -> None:
        while True:
            await asyncio.sleep(min(0.1, self.stream_expiry / 4))
            now = time.monotonic()
            for stream in list(self.streams.values()):
                idle = now - stream.last_used
                if stream.state == "available" and idle > self.stream_expiry:
                    stream.state = "expired"
                    self.stats["streams_expired"] += 1
                    await self.run_sql(stream.sql.close)
                elif stream.state == "expired" and idle > 60 + self.stream_expiry:
                    del self.streams[stream.id]

    # HTTP v1: one fresh stream per request

    async def v1(self, request: web.Request, kind: str) -> web.Response:
        self.check_http_auth(request)
        body = await request.json()
        sql = SqlStream(self.db_path)
        try:
            if kind == "execute":
                result = await self.run_sql(lambda: sql.execute(body["stmt"]))
            else:
                result = await self.run_sql(lambda: sql.batch(body["batch"]))
        except HranaError as exc:
            return web.json_response(exc.proto(), status=400)
        finally:
            await self.run_sql(sql.close)
        return web.json_response({"result": result})

    # HTTP v2/v3: pipelines and cursors on baton streams

    async def pipeline(self, request: web.Request, version: int) -> web.Response:
        self.check_http_auth(request)
        body = await request.json()
        stream = self.acquire(body.get("baton"))
        results: list[Json] = []
        try:
            for req in body.get("requests") or []:
                if stream.closed:
                    error = HranaError("The stream is closed", "STREAM_CLOSED")
                    results.append({"type": "error", "error": error.proto()})
                elif req.get("type") == "close":
                    await self.close_stream(stream)
                    results.append({"type": "ok", "response": {"type": "close"}})
                else:
                    try:
                        response = await self.run_sql(
                            lambda req=req: stream.sql.stream_request(req, version)
                        )
                        results.append({"type": "ok", "response": response})
                    except HranaError as exc:
                        results.append({"type": "error", "error": exc.proto()})
        finally:
            baton = self.release(stream)
        return web.json_response({"baton": baton, "base_url": None, "results": results})

    async def cursor(self, request: web.Request) -> web.StreamResponse:
        self.check_http_auth(request)
        body = await request.json()
        stream = self.acquire(body.get("baton"))
        try:
            result = await self.run_sql(lambda: stream.sql.batch(body["batch"]))
        finally:
            baton = self.release(stream)
        lines: list[Json] = [{"baton": baton, "base_url": None}]
        for step, (res, err) in enumerate(
            zip(result["step_results"], result["step_errors"], strict=True)
        ):
            if err is not None:
                lines.append({"type": "step_error", "step": step, "error": err})
            elif res is not None:
                lines.append({"type": "step_begin", "step": step, "cols": res["cols"]})
                lines.extend({"type": "row", "row": row} for row in res["rows"])
                lines.append(
                    {
                        "type": "step_end",
                        "affected_row_count": res["affected_row_count"],
                        "last_insert_rowid": res["last_insert_rowid"],
                    }
                )
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for line in lines:
            await response.write(json.dumps(line).encode() + b"\n")
        await response.write_eof()
        return response

    # WebSocket

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("hrana2", "hrana1"), autoping=True)
        await ws.prepare(request)
        self.stats["ws_connections"] += 1
        session = WsSession(self, ws)
        try:
            await session.serve()
        finally:
            await session.shutdown()
        return ws

    async def index(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.websocket(request)
        return web.Response(text="Hello, this is a Hrana test server (HTTP v1, v2, v3; hrana2)")


class WsStream:
    """A WebSocket stream: requests run in order on its own worker task."""

    def __init__(self, session: WsSession) -> None:
        self.sql = SqlStream(session.server.db_path, session.sqls)
        self.queue: asyncio.Queue[tuple[int, Json] | None] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(session.stream_worker(self))


class WsSession:
    """One WebSocket connection: hello, then requests on numbered streams."""

    def __init__(self, server: Server, ws: web.WebSocketResponse) -> None:
        self.server = server
        self.ws = ws
        self.version = 2 if ws.ws_protocol == "hrana2" else 1
        self.streams: dict[int, WsStream] = {}
        self.sqls: dict[int, str] = {}
        self.authenticated = False
        self.send_lock = asyncio.Lock()

    async def send(self, msg: Json) -> None:
        async with self.send_lock:
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(msg))

    async def respond(self, request_id: int, work: Awaitable[Json]) -> None:
        try:
            response = await work
            await self.send({"type": "response_ok", "request_id": request_id, "response": response})
        except HranaError as exc:
            await self.send(
                {"type": "response_error", "request_id": request_id, "error": exc.proto()}
            )

    async def serve(self) -> None:
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                await self.ws.close(code=3003, message=b"only text messages are accepted")
                return
            data = json.loads(msg.data)
            kind = data.get("type")
            if kind == "hello":
                token = self.server.auth_token
                if token is not None and data.get("jwt") != token:
                    self.server.stats["auth_rejected"] += 1
                    error = {"message": "Authentication failed: bad or missing token"}
                    error["code"] = "UNAUTHORIZED"
                    await self.send({"type": "hello_error", "error": error})
                    await self.ws.close(code=3000, message=b"authentication failed")
                    return
                self.authenticated = True
                await self.send({"type": "hello_ok"})
            elif kind == "request" and self.authenticated:
                await self.dispatch(int(data["request_id"]), data["request"])
            else:
                await self.ws.close(code=3001, message=b"unexpected message")
                return

    async def dispatch(self, request_id: int, request: Json) -> None:
        kind = request.get("type")
        self.server.stats[f"ws_{kind}"] += 1
        if kind == "open_stream":
            self.streams[int(request["stream_id"])] = WsStream(self)
            await self.send(
                {"type": "response_ok", "request_id": request_id, "response": {"type": kind}}
            )
        elif kind in ("store_sql", "close_sql"):
            sql = SqlStream(self.server.db_path, self.sqls)
            done = sql.store_sql if kind == "store_sql" else sql.close_sql
            done(request)
            await self.send(
                {"type": "response_ok", "request_id": request_id, "response": {"type": kind}}
            )
        else:
            stream = self.streams.get(int(request.get("stream_id", -1)))
            if stream is None:
                error = HranaError("The stream does not exist", "STREAM_NOT_FOUND")
                await self.send(
                    {"type": "response_error", "request_id": request_id, "error": error.proto()}
                )
                return
            if kind == "close_stream":
                del self.streams[int(request["stream_id"])]
            await stream.queue.put((request_id, request))

    async def stream_worker(self, stream: WsStream) -> None:
        while True:
            item = await stream.queue.get()
            if item is None:
                return
            request_id, request = item
            if request.get("type") == "close_stream":
                await self.server.run_sql(stream.sql.close)
                await self.send(
                    {
                        "type": "response_ok",
                        "request_id": request_id,
                        "response": {"type": "close_stream"},
                    }
                )
                return
            work = self.server.run_sql(
                lambda request=request: stream.sql.stream_request(request, self.version)
            )
            await self.respond(request_id, work)

    async def shutdown(self) -> None:
        for stream in self.streams.values():
            await stream.queue.put(None)
            await stream.task
            await self.server.run_sql(stream.sql.close)
        self.streams.clear()


def build_app(server: Server) -> web.Application:
    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        server.stats[f"{request.method} {request.path}"] += 1
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except HttpError as exc:
            return exc.response()
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return web.Response(status=400, text=f"malformed request: {exc!r}")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(dict(server.stats))

    app = web.Application(middlewares=[errors])
    app.router.add_get("/", server.index)
    app.router.add_get("/health", ok)
    app.router.add_get("/v2", ok)
    app.router.add_get("/v3", ok)
    app.router.add_get("/_test/stats", stats)
    app.router.add_post("/v1/execute", lambda r: server.v1(r, "execute"))
    app.router.add_post("/v1/batch", lambda r: server.v1(r, "batch"))
    app.router.add_post("/v2/pipeline", lambda r: server.pipeline(r, 2))
    app.router.add_post("/v3/pipeline", lambda r: server.pipeline(r, 3))
    app.router.add_post("/v3/cursor", server.cursor)
    return app


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="SQLite file backing the server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--auth-token", default=None, help="require this token")
    parser.add_argument("--stream-expiry", type=float, default=10.0, help="idle HTTP streams")
    args = parser.parse_args(argv)

    setup = apsw.Connection(args.db)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.close()
    server = Server(args.db, args.auth_token, args.stream_expiry)
    runner = web.AppRunner(build_app(server), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"LISTENING {port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    expirer = loop.create_task(server.expire_idle_streams())
    await stop.wait()
    expirer.cancel()
    await runner.cleanup()
    server.pool.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
