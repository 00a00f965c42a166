"""durably's HTTP API (`pip install 'durably[server]'`): `create_app(durably)`.

Wire-compatible with @coji/durably 0.6's `createDurablyHandler`, so its React hooks
and clients work against it unchanged.
"""

from .app import Authorize, create_app

__all__ = ["Authorize", "create_app"]
