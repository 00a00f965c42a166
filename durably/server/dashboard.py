"""The dashboard: a page and its assets, shipped in the package and served by `create_app`.

Plain HTML, CSS and JavaScript under `static/` (no build step, nothing from a CDN). The page
reaches the API with relative URLs, so it works wherever the app is mounted, as long as it
is opened with the mount's trailing slash (`/api/durably/`); Starlette and FastAPI redirect
`/api/durably` there by themselves. `create_dashboard` serves the same page apart from the
API (what `durably serve` does: the dashboard at `/`, the API under `/api`).
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from durably import Durably

#: the path the assets are served under; `_` keeps it apart from every API route
ASSET_PREFIX = "/_dashboard"

_MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_HEADERS = {
    # the page is small and changes with the installed version: always revalidate
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    # everything is local: no inline script or style, no other origin, no framing
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'self'"
    ),
    "referrer-policy": "same-origin",
}
# the page's pointer to the API, relative to the page; index.html ships with "." (same place)
_API_META = b'<meta name="durably-api" content=".">'


@cache
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _file(name: str, body: bytes | None = None) -> Response:
    return Response(
        _read(name) if body is None else body, media_type=_MEDIA_TYPES[name], headers=_HEADERS
    )


def _api_base(api: str) -> str:
    """`api` checked and given its trailing slash (a relative URL resolves against a folder)."""
    if not isinstance(api, str) or not api.strip():
        raise ValueError(
            f"api must be the API's URL relative to the page, e.g. 'api/'; got {api!r}"
        )
    parts = urlsplit(api)
    if parts.scheme or parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"api must be a path on the page's own origin, e.g. 'api/' or '/api/', got {api!r} "
            "(the page's Content-Security-Policy allows no other origin)"
        )
    return api if api.endswith("/") else api + "/"


def _page_html(api: str) -> bytes:
    base = _api_base(api)
    html = _read("index.html")
    if base == "./":
        return html
    if _API_META not in html:
        raise RuntimeError("durably/server/static/index.html lost its durably-api meta tag")
    meta = f'<meta name="durably-api" content="{escape(base, quote=True)}">'.encode()
    return html.replace(_API_META, meta)


def page(api: str = ".") -> Response:
    """The dashboard's HTML; `api` is where the API is, relative to the page."""
    return _file("index.html", _page_html(api))


def asset(name: str) -> Response | None:
    """One of the dashboard's assets (`app.js`, `app.css`), or None for any other name."""
    if name == "index.html" or name not in _MEDIA_TYPES:
        return None
    return _file(name)


class _Endpoint:
    """GET of the page (`page_html`) or, without it, of the asset the path names.

    Any other method or name is 404 JSON, as in the API.
    """

    def __init__(self, page_html: bytes | None = None) -> None:
        self._page_html = page_html

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response: Response | None = None
        if request.method == "GET":
            if self._page_html is not None:
                response = _file("index.html", self._page_html)
            elif "name" in request.path_params:
                response = asset(request.path_params["name"])
        if response is None:
            response = JSONResponse(
                {"error": f"not found: {request.method} {request.url.path}"}, status_code=404
            )
        await response(scope, receive, send)


def create_dashboard(api: str = "api/") -> Starlette:
    """The dashboard alone, for a page served apart from the API `create_app` serves.

    `api` is the API's URL relative to the page (`"api/"` when the API is mounted under
    `/api` and the dashboard at `/`) or an absolute path on the same origin (`"/api/"`).
    The page itself holds no data; the API's `authorize` guards what it shows.
    """
    # ASGI endpoints (not functions) match every method: each answers 404 itself
    app = Starlette(
        routes=[
            Route("/", _Endpoint(_page_html(api))),
            Route(ASSET_PREFIX + "/{name}", _Endpoint()),
        ]
    )
    app.router.redirect_slashes = False
    app.router.default = _Endpoint()  # no page, no asset name: 404
    return app


def jobs_json(durably: Durably) -> list[dict[str, Any]]:
    """The registered jobs as `[{name, inputSchema}]`, sorted by name.

    `inputSchema` is the JSON Schema of the job's input (pydantic's), or null when pydantic
    cannot describe the type; the trigger form uses it to prefill an example input.
    """
    handles = {durably.jobs[key].name: durably.jobs[key] for key in durably.jobs}
    result: list[dict[str, Any]] = []
    for name in sorted(handles):
        try:
            schema: dict[str, Any] | None = handles[name].definition.input_adapter.json_schema()
        except Exception:  # a type pydantic validates but cannot describe
            schema = None
        result.append({"name": name, "inputSchema": schema})
    return result
