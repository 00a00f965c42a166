"""What `durably serve` puts in front of the HTTP API: a Host check and optional basic auth.

The API can trigger, cancel and delete runs and shows every payload, so a server that
anyone can reach is an open door. Three defences, all in the CLI (an application that
mounts `create_app` itself has its own `authorize` and its own proxy):

- the `Host` header must name the server (its `--host`, `localhost`, `127.0.0.1`,
  `[::1]`, or an `--allowed-host`): a page on another site whose name was rebound to
  127.0.0.1 (DNS rebinding) cannot reach a loopback server with its own name;
- HTTP basic auth when `DURABLY_SERVE_USER` and `DURABLY_SERVE_PASSWORD` are set (from the
  environment, so the password is not on a command line that `ps` shows); a 401 carries
  `WWW-Authenticate` so that a browser asks for them;
- a warning on stderr when the server listens beyond loopback without authentication.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._errors import DurablyError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

USER_ENV = "DURABLY_SERVE_USER"
PASSWORD_ENV = "DURABLY_SERVE_PASSWORD"
ANY_HOST = "*"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WWW_AUTHENTICATE = 'Basic realm="durably", charset="UTF-8"'
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


@dataclass(frozen=True)
class Credentials:
    """The one user `durably serve` accepts; the password never appears in a repr."""

    user: str
    password: str = field(repr=False)


def credentials_from_env(environ: Mapping[str, str] = os.environ) -> Credentials | None:
    """The credentials of `DURABLY_SERVE_USER`/`DURABLY_SERVE_PASSWORD`; None if neither is
    set. Half a configuration is an error rather than an open server.
    """
    user, password = environ.get(USER_ENV), environ.get(PASSWORD_ENV)
    if user is None and password is None:
        return None
    if user is None or password is None:
        missing = USER_ENV if user is None else PASSWORD_ENV
        given = PASSWORD_ENV if user is None else USER_ENV
        raise DurablyError(f"{given} is set but {missing} is not: set both to require a password")
    if not user or not password:
        raise DurablyError(f"{USER_ENV if not user else PASSWORD_ENV} is empty")
    if ":" in user:
        raise DurablyError(f"{USER_ENV} may not contain ':' (HTTP basic auth splits on it)")
    return Credentials(user, password)


def _normal(name: str) -> str:
    """A host name lower case without a final dot, an address in its canonical form."""
    name = name.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def host_name(header: str) -> str | None:
    """The host of a `Host` header (`name`, `name:port`, `[v6]:port`) in `_normal` form,
    without port or brackets; None when the header is not of that form.
    """
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return None
        host, rest = header[1:end], header[end + 1 :]
    else:
        host, colon, port = header.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    return _normal(host) or None


def allowed_host(text: str) -> str:
    """An argparse type for `--allowed-host`: a host name or address without a port, or `*`."""
    name = text.strip()
    if name == ANY_HOST:
        return name
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = _normal(name)
    try:
        ipaddress.ip_address(name)
    except ValueError:
        if not _HOST_NAME.fullmatch(name):
            raise argparse.ArgumentTypeError(
                f"expected a host name or address without a port, got {text!r}"
            ) from None
    return name


def allowed_hosts(bound: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The names a request's `Host` may give (None: any, when `*` is among `extra`)."""
    names = {*LOOPBACK_HOSTS, *extra}
    if ANY_HOST in names:
        return None
    names.add(_normal(bound.strip("[]")))
    return frozenset(names)


def is_loopback(host: str) -> bool:
    """Whether listening on `host` reaches this machine only (a name must resolve to
    loopback addresses only; one that does not resolve counts as beyond).
    """
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
        return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    except (OSError, ValueError):
        return False


def exposure_warning(host: str, port: int) -> str:
    """What `serve` prints on stderr when it listens beyond loopback without a password."""
    return (
        f"WARNING: durably serve listens on {host}:{port}, beyond this machine, WITHOUT "
        "authentication: anyone who can reach it sees every run and can trigger, retry, "
        f"cancel and delete runs. Set {USER_ENV} and {PASSWORD_ENV} to require a password "
        "(HTTP basic auth; put a TLS proxy in front), or listen on 127.0.0.1."
    )


class ServeGuard:
    """ASGI middleware: 400 for a `Host` not in `hosts` (None: any), then 401 with
    `WWW-Authenticate` unless the request carries `credentials` (None: no auth).

    Errors are JSON `{error}` like the API's. Credentials are compared with
    `hmac.compare_digest`, the user and the password both, so the time taken does not
    tell which part was wrong.
    """

    def __init__(
        self, app: ASGIApp, *, hosts: frozenset[str] | None, credentials: Credentials | None
    ) -> None:
        self.app = app
        self.hosts = hosts
        self._credentials = (
            None
            if credentials is None
            else (credentials.user.encode(), credentials.password.encode())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        problem = self._host_problem(headers.get("host"))
        if problem is not None:
            await _reject(scope, receive, send, 400, problem)
        elif self._credentials is not None and not self._authenticated(
            headers.get("authorization")
        ):
            await _reject(
                scope,
                receive,
                send,
                401,
                "authentication required (HTTP basic auth)",
                {"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        else:
            await self.app(scope, receive, send)

    def _host_problem(self, header: str | None) -> str | None:
        if self.hosts is None:
            return None
        if header is None:
            return "a Host header is required"
        name = host_name(header)
        if name is None:
            return "malformed Host header"
        if name in self.hosts:
            return None
        shown = f"[{name}]" if ":" in name else name
        return (
            f"host {shown!r} is not allowed; start durably serve with --allowed-host "
            f"{shown} to accept it"
        )

    def _authenticated(self, header: str | None) -> bool:
        assert self._credentials is not None
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, colon, password = decoded.partition(b":")
        expected_user, expected_password = self._credentials
        user_ok = hmac.compare_digest(user, expected_user)
        password_ok = hmac.compare_digest(password, expected_password)
        return bool(colon) and user_ok and password_ok


async def _reject(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    from starlette.responses import JSONResponse

    await JSONResponse({"error": message}, status_code=status, headers=headers)(
        scope, receive, send
    )
