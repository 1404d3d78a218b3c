"""Evaluation on real data: the split, the metrics, centralised baselines, the edge ranking and the wire audit.

- `evaluate_movielens`: edge-only, edge + federation and cold-start TVs against the baselines (`evaluate`).
- `leave_last_out`, `validation_split`, `Split`: one split every method sees (`split`).
- `target_rank`, `summarise`, `paired_bootstrap`: full-ranking metrics and intervals (`metrics`).
- `audit_uplink`: every uplink frame decoded, nothing raw may leave a TV (`wire_audit`).
- `baselines`, `cell_granularity`: the centralised models and the cell-keyed edge rule compared.
"""

from omega.sim.evaluation.evaluate import evaluate_movielens
from omega.sim.evaluation.metrics import hit_at_k, ndcg_at_k, paired_bootstrap, summarise, target_rank
from omega.sim.evaluation.split import Split, leave_last_out, leave_last_out_arrays, validation_split
from omega.sim.evaluation.wire_audit import AuditReport, audit_uplink

__all__ = [
    "AuditReport",
    "Split",
    "audit_uplink",
    "evaluate_movielens",
    "hit_at_k",
    "leave_last_out",
    "leave_last_out_arrays",
    "ndcg_at_k",
    "paired_bootstrap",
    "summarise",
    "target_rank",
    "validation_split",
]
