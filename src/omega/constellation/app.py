"""The ASGI app of one shard's sync server (Starlette): `create_app(settings, clock=...)`.

The app is the routes (routes.py) and the lifespan that runs the shard behind
them (lifespan.py), sharing one `ServerState` as `app.state.omega`
(server_state.py: connections, readiness, draining).

`create_app(settings, clock=...)` runs the whole server on another clock
(seconds, like `time.time`): the fleet simulator's simulated time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette

from omega.constellation.keyring import Keyring
from omega.constellation.lifespan import lifespan
from omega.constellation.metrics import ServerMetrics
from omega.constellation.routes import routes
from omega.constellation.server_state import ServerState
from omega.constellation.settings import ServerSettings

__all__ = ["ServerState", "create_app"]


def create_app(settings: ServerSettings, *, clock: Callable[[], float] | None = None) -> Starlette:
    """The sync server for `settings` (which must hold a secret: see settings.with_dev_secret).

    `clock` (seconds; default `time.time`) is the server's "now" for frame validation, aggregation,
    trend windows and housekeeping.
    """
    state = ServerState(
        settings=settings,
        metrics=ServerMetrics(),
        keyring=Keyring(settings.secrets, settings.active_key_id),
        salt=settings.aggregation_salt(),
        clock=clock or time.time,
    )
    app = Starlette(routes=routes(), lifespan=lifespan)
    app.state.omega = state
    return app
