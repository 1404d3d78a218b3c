"""Where the evaluation data is when no --data is given: $OMEGA_DATA, else ../shared/data or ./data.

The fallbacks are relative to the current directory, not to the package, so they
work from an installed package as from a checkout (from the repository root,
../shared/data is the team's shared copy). $OMEGA_DATA may name the dataset
folder itself or a folder holding it.
"""

from __future__ import annotations

import os
from pathlib import Path

from omega.datasets.movielens import detect_layout
from omega.errors import OmegaError

DATA_ENV = "OMEGA_DATA"
DEFAULT_DATASET = "ml-latest-small"
#: folders holding datasets, relative to the current directory, searched in this order
SEARCHED = (Path("..") / "shared" / "data", Path("data"))


def data_dir_candidates(dataset: str = DEFAULT_DATASET) -> list[Path]:
    """The folders `default_data_dir` tries, in order (absolute)."""
    env = os.environ.get(DATA_ENV)
    found = [Path(env), Path(env) / dataset] if env else [base / dataset for base in SEARCHED]
    return [Path(os.path.abspath(path)) for path in found]


def default_data_dir(dataset: str = DEFAULT_DATASET) -> Path | None:
    """The first candidate that is a MovieLens folder, or None."""
    for path in data_dir_candidates(dataset):
        try:
            detect_layout(path)
        except OmegaError:
            continue
        return path
    return None


def resolve_data_dir(data: Path | None, dataset: str = DEFAULT_DATASET) -> Path:
    """`data` when given, else the default folder; one OmegaError naming every place it looked in."""
    if data is not None:
        return data
    found = default_data_dir(dataset)
    if found is None:
        looked = ", ".join(str(path) for path in data_dir_candidates(dataset))
        raise OmegaError(
            "no MovieLens data: pass --data DIR (ml-latest-small, ml-100k or ml-1m folder) "
            f"or set {DATA_ENV} (looked in {looked})"
        )
    return found
