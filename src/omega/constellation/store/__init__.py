"""Constellation stores: `open_store(url)` picks the implementation from the URL scheme."""

from __future__ import annotations

from omega.constellation.store.base import (
    EDGE_WIRE_BYTES,
    PATTERN_WIRE_BYTES,
    CellContribution,
    ChangePage,
    ConstellationStore,
    EdgeContribution,
    PreparedPush,
    PruneStats,
    PushOutcome,
    StoreStats,
)
from omega.errors import OmegaError

__all__ = [
    "EDGE_WIRE_BYTES",
    "PATTERN_WIRE_BYTES",
    "CellContribution",
    "ChangePage",
    "ConstellationStore",
    "EdgeContribution",
    "PreparedPush",
    "PruneStats",
    "PushOutcome",
    "StoreStats",
    "open_store",
]


def sqlite_path(url: str) -> str:
    """`sqlite:PATH`, `sqlite://PATH` or `sqlite:///ABS/PATH` → the file path."""
    rest = url[len("sqlite:") :]
    if rest.startswith("///"):
        rest = rest[2:]
    elif rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise OmegaError(f"store URL {url!r} has no path")
    if "\0" in rest:  # from a config file: no file system takes it
        raise OmegaError(f"cannot open store {url!r}: its path contains a NUL byte")
    return rest


async def open_store(url: str, *, origin: str | None = None) -> ConstellationStore:
    """Open (creating if needed) the store at `url`. `origin` names this shard in federation.

    An existing store keeps the origin it was created with; passing a different one is an error.
    """
    if not isinstance(url, str):
        raise OmegaError(f"store URL must be a string, got {type(url).__name__}")
    if url.startswith("sqlite:"):
        from omega.constellation.store.sqlite import SqliteStore

        return await SqliteStore.open(sqlite_path(url), origin=origin)
    if url.startswith(("postgresql://", "postgres://")):
        from omega.constellation.store.postgres import PostgresStore

        return await PostgresStore.open(url, origin=origin)
    raise OmegaError(f"unsupported store URL: {url!r} (expected sqlite:PATH or postgresql://...)")
