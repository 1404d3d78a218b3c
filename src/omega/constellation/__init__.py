"""The cloud: sync server, validation, stores, aggregation, trends, federation. Never imports omega.brain."""
