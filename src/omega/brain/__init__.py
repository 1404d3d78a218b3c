"""The TV node: embedder, vector index, pattern store, recommender, sync agent. Never imports omega.constellation."""
