"""durably's HTTP API and dashboard (`pip install 'durably[server]'`): `create_app(durably)`.

Wire-compatible with @coji/durably 0.6's `createDurablyHandler`, so its React hooks
and clients work against it unchanged. `create_app` also serves the dashboard at its
root; `create_dashboard(api=...)` serves the page alone, pointed at an API elsewhere.
"""

from .app import Authorize, create_app
from .dashboard import create_dashboard

__all__ = ["Authorize", "create_app", "create_dashboard"]
