"""Everything around the product that runs it at scale or measures it; may use both brain and constellation.

- `omega.sim.fleet`: the fleet simulator (real TV brains syncing with a real constellation).
- `omega.sim.evaluation`: quality on real data against centralised baselines, and the wire audit.
- `omega.sim.load`: the load generator and the server child process.
- `omega.sim.bench`: the edge and sync benchmarks behind `omega bench`.
- `omega.sim.capacity`: the capacity and cost model; `omega.sim.demo`: the whole system, summarised.
"""
