"""durably's HTTP API and dashboard (`pip install 'durably[server]'`): `create_app(durably)`.

Wire-compatible with @coji/durably 0.6's `createDurablyHandler`, so its React hooks
and clients work against it unchanged. `create_app` also serves the dashboard at its
root; `create_dashboard(api=...)` serves the page alone, pointed at an API elsewhere.
"""

try:
    import starlette  # noqa: F401
except ImportError as exc:  # say what to install, not only what is missing
    raise ModuleNotFoundError(
        f"durably.server needs Starlette ({exc}); install it with: pip install 'durably[server]'",
        name=exc.name,
    ) from exc

from .app import Authorize, create_app
from .dashboard import create_dashboard

__all__ = ["Authorize", "create_app", "create_dashboard"]
