"""The fleet simulator: many real TV brains syncing with a real constellation, and experiments on it."""
