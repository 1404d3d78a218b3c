"""The binary user × item training matrix of a split."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from omega.sim.evaluation.split import Split


def user_item_matrix(split: Split) -> sp.csr_matrix:
    """CSR users × items with 1.0 where the user has the item in their history."""
    rows, items = split.train_interactions()
    matrix = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, items)), shape=(split.n_users, split.n_items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # a rewatch is still one interaction
    return matrix


def item_popularity(split: Split) -> np.ndarray:
    """Number of distinct users who have each item in their training history."""
    return np.asarray(user_item_matrix(split).sum(axis=0)).ravel()
