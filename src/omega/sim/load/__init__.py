"""The load generator: simulated TVs against one real sync server process.

- `run_load`, `LoadConfig`: client processes holding many device connections, and the report (`runner`).
- `ServerProcess`, `start_server`: a sync server child on a loopback port, also used by the
  benchmarks and the tests (`server_process`).
"""

from omega.sim.load.runner import LoadConfig, run_load
from omega.sim.load.server_process import ServerProcess, start_server

__all__ = ["LoadConfig", "ServerProcess", "run_load", "start_server"]
