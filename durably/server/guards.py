"""What the HTTP API checks before it acts: body size, origin, content type, query numbers.

A server exposed to browsers and to the network must not be driven from a page on another
origin (CSRF), must not read an unbounded body, and must answer bad input with a 4xx, never
a 500. Each check raises `HTTPError`, which the app answers as `{error: message}`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Any, NoReturn
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import Message, Receive

from durably import ConfigurationError

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
# limits that every backend can bind (SQLite integers are 64-bit)
_MAX_INT = 2**63 - 1
_MAX_INT_DIGITS = len(str(_MAX_INT))
_DIGITS = re.compile(r"[0-9]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: the values of Sec-Fetch-Site that a browser sends for a request from another origin
_FOREIGN_SITES = ("cross-site", "same-site")

Origin = tuple[str, str, int]
"""An origin as compared: (scheme, host, port), lower case, the default port filled in."""


class HTTPError(Exception):
    """Answered as `{error: message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> NoReturn:
    raise HTTPError(400, message)


def new_error_id() -> str:
    """A short random id that ties a 500 answer to its log record."""
    return secrets.token_hex(6)


def _shown(value: str, limit: int = 80) -> str:
    """`value` for an error message, cut so a hostile one cannot bloat the answer."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


# -- query numbers ----------------------------------------------------------------------


def non_negative_int(request: Request, name: str) -> int | None:
    """A query parameter as an int in 0..2**63-1; absent or empty is None (no limit).

    ASCII digits only, and their count is checked before `int()`, whose digit limit
    would otherwise raise a ValueError on a few thousand digits.
    """
    raw = request.query_params.get(name)
    if not raw:  # absent or empty: no limit, as in the original
        return None
    digits = raw.lstrip("0") or "0"  # leading zeros count in int()'s digit limit too
    if not _DIGITS.fullmatch(raw) or len(digits) > _MAX_INT_DIGITS or int(digits) > _MAX_INT:
        bad_request(f"{name} must be a non-negative integer up to {_MAX_INT}, got {_shown(raw)}")
    return int(digits)


# -- body size --------------------------------------------------------------------------


def check_max_body_bytes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"max_body_bytes must be a positive int, got {value!r}")
    return value


def _too_large(limit: int, size: str) -> HTTPError:
    return HTTPError(
        413, f"the request body is {size} bytes; at most {limit} are accepted (max_body_bytes)"
    )


def check_declared_length(request: Request, limit: int) -> None:
    """413 at once for a Content-Length over `limit`: the body is never read."""
    declared = request.headers.get("content-length")
    if declared is None or not _DIGITS.fullmatch(declared):
        return  # none (chunked: counted while read) or malformed (the server refuses it)
    if len(declared) > 30 or int(declared) > limit:
        raise _too_large(limit, declared if len(declared) <= 30 else "over " + str(limit))


def bounded_receive(receive: Receive, limit: int) -> Receive:
    """`receive`, raising a 413 `HTTPError` as soon as the body read exceeds `limit` bytes,
    whoever reads it (a route or the authorize hook), with or without a Content-Length."""
    received = 0

    async def bounded() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit, f"over {limit}")
        return message

    return bounded


# -- content type -----------------------------------------------------------------------


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON: a cross-site form can only send text/plain,
    urlencoded or multipart bodies, and a fetch that sets JSON needs a CORS preflight."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        got = _shown(content_type) if content_type else "none"
        raise HTTPError(
            415,
            f"{request.method} {request.url.path} needs Content-Type: application/json, got {got}",
        )


# -- origin -----------------------------------------------------------------------------


def _origin(scheme: str, netloc: str) -> Origin | None:
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS or not netloc or "@" in netloc:
        return None
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, or out of range
        return None
    if not host:
        return None
    return (scheme, host, _DEFAULT_PORTS[scheme] if port is None else port)


def parse_origin(value: str) -> Origin | None:
    """`scheme://host[:port]` (the form of an Origin header) as compared, or None."""
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        return None
    if parts.path or parts.query or parts.fragment or value.endswith(("?", "#")):
        return None
    return _origin(parts.scheme, parts.netloc)


def own_origin(request: Request) -> Origin | None:
    """The origin the request was sent to: the scope's scheme (https behind a proxy that
    says so to the ASGI server) and the Host header (or the server address)."""
    scheme = request.scope.get("scheme", "http")
    host = request.headers.get("host")
    if host is None:
        server = request.scope.get("server")
        if not server:
            return None
        address, port = server
        host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return _origin(scheme, host)


def parse_trusted_origins(values: Iterable[str]) -> frozenset[Origin]:
    if isinstance(values, (str, bytes)):
        raise ConfigurationError(
            f"trusted_origins must be a sequence of origins, not one string: [{values!r}]"
        )
    origins = set()
    for value in values:
        origin = parse_origin(value) if isinstance(value, str) else None
        if origin is None:
            raise ConfigurationError(
                f"trusted_origins must hold origins like 'https://host[:port]'"
                f" (no path, no wildcard), got {value!r}"
            )
        origins.add(origin)
    return frozenset(origins)


def check_origin(request: Request, trusted: frozenset[Origin]) -> None:
    """403 for a state-changing request a browser sent from another origin (CSRF).

    An Origin in `trusted` passes. Otherwise the browser's own Sec-Fetch-Site decides when
    it is there (no page can set it; "same-origin" holds even behind a proxy that rewrites
    Host or terminates TLS); without it, an Origin header must be this server's own.
    Requests with neither (curl, Python clients) pass: they carry no browser's cookies.
    """
    origin = request.headers.get("origin")
    if origin is not None and parse_origin(origin) in trusted:
        return
    site = request.headers.get("sec-fetch-site", "").lower()
    hint = "; a dashboard served elsewhere needs create_app(..., trusted_origins=[...])"
    if site in _FOREIGN_SITES:
        raise HTTPError(
            403, f"cross-origin request refused: the browser sent it from a {site} origin{hint}"
        )
    if site == "same-origin" or origin is None:
        return
    own = own_origin(request)
    if own is None or parse_origin(origin) != own:
        raise HTTPError(
            403, f"cross-origin request refused: origin {_shown(origin)} is not this server's{hint}"
        )
