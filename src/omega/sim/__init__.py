"""Fleet simulator, load generator, evaluation on real data, capacity model."""
