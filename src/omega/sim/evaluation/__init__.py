"""Evaluation on real data: the split, the metrics, centralised baselines, the edge ranking and the wire audit."""
