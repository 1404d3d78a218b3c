"""Time-ordered leave-last-out splits for evaluation.

Every rating counts as one interaction (a viewing event) whatever its stars:
a viewer rates what they watched, so a 1-star rating is still a watch. Per user,
the last interaction in the stable time order of `omega.datasets.movielens.Ratings`
(timestamp, then file order) is the held-out target and all earlier ones are the
training history. A user needs at least one training item, so users with a
single interaction are dropped.

`validation_split` applies the same rule once more inside the training part
(second-to-last item held out), so models are tuned without ever seeing the test
targets.

Items are addressed by a dense index 0..n_items-1 over the whole catalog
(`item_ids[index]` is the content id), so a model's score vector covers every
item, including never-rated ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omega.datasets.movielens import MovieLensData
from omega.errors import OmegaError


@dataclass(frozen=True)
class Split:
    """Per-user training histories and one held-out target each."""

    item_ids: np.ndarray  # int32 content ids; position = dense item index
    users: np.ndarray  # int32 user ids, one per row
    histories: tuple[np.ndarray, ...]  # per row: dense item indices in time order
    targets: np.ndarray  # int32 dense index of each row's held-out item

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.users.shape[0])

    def train_interactions(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) arrays of every training interaction, rows in order."""
        lengths = np.fromiter((h.size for h in self.histories), dtype=np.int64, count=self.n_users)
        rows = np.repeat(np.arange(self.n_users, dtype=np.int32), lengths)
        items = np.concatenate(self.histories) if self.histories else np.zeros(0, np.int32)
        return rows, items.astype(np.int32, copy=False)


def leave_last_out(data: MovieLensData) -> Split:
    """The test split of a loaded MovieLens dataset over its whole catalog."""
    return leave_last_out_arrays(data.ratings.user, data.ratings.item, data.item_ids)


def leave_last_out_arrays(user: np.ndarray, item: np.ndarray, catalog: np.ndarray) -> Split:
    """Split interactions given as parallel arrays already in time order.

    `catalog` lists every content id that can be recommended; every `item` must
    be in it.
    """
    user = np.asarray(user)
    item = np.asarray(item)
    catalog = np.asarray(catalog, dtype=np.int32)
    if user.shape != item.shape or user.ndim != 1:
        raise OmegaError("user and item arrays must be 1-d and of equal length")
    item_ids = np.unique(catalog)
    if item_ids.size != catalog.size:
        raise OmegaError("catalog has duplicate content ids")
    dense = np.searchsorted(item_ids, item)
    dense = np.minimum(dense, max(item_ids.size - 1, 0))
    if item.size and (item_ids.size == 0 or not np.array_equal(item_ids[dense], item)):
        raise OmegaError("some interactions refer to items outside the catalog")
    # A stable sort by user keeps each user's interactions in time order.
    order = np.argsort(user, kind="stable")
    users_sorted = user[order]
    items_sorted = dense[order].astype(np.int32)
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]]) if user.size else np.zeros(0, int)
    sequences = np.split(items_sorted, starts[1:])
    return _hold_out_last(item_ids, users_sorted[starts].astype(np.int32), sequences)


def validation_split(split: Split) -> Split:
    """Hold out each user's last training item, for tuning without touching the test targets."""
    return _hold_out_last(split.item_ids, split.users, list(split.histories))


def _hold_out_last(item_ids: np.ndarray, users: np.ndarray, sequences: list[np.ndarray]) -> Split:
    keep = [i for i, seq in enumerate(sequences) if seq.size >= 2]
    return Split(
        item_ids=item_ids,
        users=users[keep] if keep else np.zeros(0, np.int32),
        histories=tuple(sequences[i][:-1] for i in keep),
        targets=np.array([sequences[i][-1] for i in keep], dtype=np.int32),
    )
