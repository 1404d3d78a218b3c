"""Federation messages: a `FederatedState` cut into chunks that fit a NATS message, with content ids.

Any subset of a CRDT state is itself a valid delta, so a large state (a full
checkpoint of a shard with thousands of cells, ~3.1 KB each) is simply split
into several independent messages. The message id is a hash of the bytes: the
same content published twice inside the duplicate window is stored once, and
anything that slips through is a no-op to merge anyway.
"""

from __future__ import annotations

import hashlib

from omega.constellation.crdt import FederatedState, encode_entries

# NATS' default max_payload is 1 MiB; stay well under it.
MAX_MESSAGE_BYTES = 512 * 1024
_CELL_ENTRY_BYTES = 3200  # header + 384 float64 + origin, rounded up
_EDGE_ENTRY_BYTES = 300


def encode_chunks(state: FederatedState, max_bytes: int = MAX_MESSAGE_BYTES) -> list[bytes]:
    """Canonical (sorted) encoding of `state` split into messages of at most ~max_bytes each."""
    cells = sorted(state.cells.items())
    edges = sorted(state.edges.items())
    per_cells = max(1, max_bytes // _CELL_ENTRY_BYTES)
    per_edges = max(1, max_bytes // _EDGE_ENTRY_BYTES)
    out = [encode_entries(state.codebook_version, cells[i : i + per_cells], []) for i in range(0, len(cells), per_cells)]
    out += [encode_entries(state.codebook_version, [], edges[i : i + per_edges]) for i in range(0, len(edges), per_edges)]
    return out


def message_id(subject: str, payload: bytes) -> str:
    """Dedupe key for Nats-Msg-Id: where it goes and what it holds (equal content on a subject is stored once)."""
    return f"{subject}:{hashlib.sha256(payload).hexdigest()[:32]}"
