"""The load generator: simulated TVs against one real sync server process.

- `LoadConfig`: one run's target, numbers and plan (`config`); `run_load`: client processes holding
  many device connections, and the report (`runner`).
- `ServerProcess`, `start_server`: a sync server child on a loopback port, also used by the
  benchmarks and the tests (`server_process`).
"""

from omega.sim.load.config import LoadConfig
from omega.sim.load.runner import run_load
from omega.sim.load.server_process import ServerProcess, start_server

__all__ = ["LoadConfig", "ServerProcess", "run_load", "start_server"]
