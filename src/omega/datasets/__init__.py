"""Real datasets the brain is evaluated and benchmarked on (MovieLens), beside the model as in `implicit.datasets`.

- `load_movielens(folder)`: the catalog and the ratings of an ml-latest(-small), ml-100k or ml-1m folder.
- `resolve_data_dir(data)`: `data`, else $OMEGA_DATA, ../shared/data or ./data (relative to the current directory).
"""

from omega.datasets.location import DATA_ENV, data_dir_candidates, default_data_dir, resolve_data_dir
from omega.datasets.movielens import (
    LAYOUTS,
    ML100K_GENRES,
    MovieLensData,
    RatingEvent,
    Ratings,
    detect_layout,
    load_movielens,
    split_year,
)

__all__ = [
    "DATA_ENV",
    "LAYOUTS",
    "ML100K_GENRES",
    "MovieLensData",
    "RatingEvent",
    "Ratings",
    "data_dir_candidates",
    "default_data_dir",
    "detect_layout",
    "load_movielens",
    "resolve_data_dir",
    "split_year",
]
