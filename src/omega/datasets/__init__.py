"""Real datasets the brain is evaluated and benchmarked on (MovieLens), beside the model as in `implicit.datasets`."""
