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

from omega.constellation.guard import ConnectionGuard, fd_soft_limit
from omega.constellation.keyring import Keyring
from omega.constellation.lifespan import lifespan
from omega.constellation.metrics import ServerMetrics
from omega.constellation.routes import routes
from omega.constellation.server_state import ServerState
from omega.constellation.settings import ServerSettings

__all__ = ["ServerState", "create_app"]


def create_app(
    settings: ServerSettings, *, clock: Callable[[], float] | None = None, periodic: bool = True
) -> Starlette:
    """The sync server for `settings` (which must hold a secret: see settings.with_dev_secret).

    `clock` (seconds; default `time.time`) is the server's "now" for frame validation, aggregation,
    trend windows and housekeeping. `periodic=False`: no wall-clock timers for housekeeping, trend
    windows and refinement; the caller runs them on its clock (`ServerState.periodic`).
    """
    metrics = ServerMetrics()
    state = ServerState(
        settings=settings,
        metrics=metrics,
        keyring=Keyring(settings.secrets, settings.active_key_id),
        salt=settings.aggregation_salt(),
        clock=clock or time.time,
        periodic=periodic,
        guard=ConnectionGuard(metrics, max_connections=settings.max_connections, max_per_ip=settings.max_connections_per_ip,
                              request_timeout_s=settings.request_timeout_s, fd_limit=fd_soft_limit()),
    )  # fmt: skip
    app = Starlette(routes=routes(), lifespan=lifespan)
    app.state.omega = state
    return app
