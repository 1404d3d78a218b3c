"""The load generator: simulated TVs against one real sync server process."""
