"""Writers of tiny MovieLens folders in each layout, for tests (no MovieLens files are copied).

`write_latest`, `write_100k` and `write_1m` write exactly the rows they are given;
`write_fixture(layout, dir)` writes a small synthetic dataset with sequential
structure (viewers mostly watch item i+1 after item i), so sequence-aware models
have something real to learn. Import as ``from movielens_fixtures import ...``
(tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omega.datasets.movielens import ML100K_GENRES

Movie = tuple[int, str, Sequence[str]]  # content id, title as in the file, genres
Rating = tuple[int, int, float, int]  # user, content id, stars, timestamp
Tag = tuple[int, int, str, int]  # user, content id, tag, timestamp

LAYOUTS = ("ml-latest", "ml-100k", "ml-1m")

# Genre names every layout knows (ml-100k says "Children's", ml-latest "Children": avoided).
TINY_MOVIES: list[Movie] = [
    (1, "Toy Story (1995)", ("Adventure", "Animation", "Comedy")),
    (2, "American President, The (1995)", ("Comedy", "Drama", "Romance")),  # comma in the title
    (3, "Cité des enfants perdus, La (1995)", ("Fantasy", "Sci-Fi")),  # latin-1 accent
    (5, "Babylon 5", ()),  # no year, no genre
]
# Out of time order on purpose; users 1 and 2 each have a tie on the timestamp.
TINY_RATINGS: list[Rating] = [
    (2, 3, 4.0, 300),
    (1, 1, 5.0, 100),
    (1, 2, 3.0, 200),
    (1, 3, 1.0, 200),
    (2, 1, 2.0, 50),
    (2, 5, 4.0, 300),
    (3, 2, 4.0, 10),
]
TINY_TAGS: list[Tag] = [
    (1, 1, "Pixar", 101),
    (2, 1, "pixar", 102),
    (2, 1, "funny, clever", 103),  # comma inside a quoted tag
    (1, 2, "politics", 201),
]


def write_latest(
    folder: Path,
    movies: Sequence[Movie] = TINY_MOVIES,
    ratings: Sequence[Rating] = TINY_RATINGS,
    tags: Sequence[Tag] | None = TINY_TAGS,
) -> Path:
    """ml-latest layout: UTF-8 CSV with headers (titles with commas get quoted)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "movies.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["movieId", "title", "genres"])
        for content_id, title, genres in movies:
            w.writerow([content_id, title, "|".join(genres) or "(no genres listed)"])
    with open(folder / "ratings.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for user, item, stars, ts in ratings:
            w.writerow([user, item, f"{stars:.1f}", ts])
    if tags is not None:
        with open(folder / "tags.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["userId", "movieId", "tag", "timestamp"])
            w.writerows(tags)
    return folder


def write_100k(
    folder: Path,
    movies: Sequence[Movie] = TINY_MOVIES,
    ratings: Sequence[Rating] = TINY_RATINGS,
    with_genre_file: bool = True,
) -> Path:
    """ml-100k layout: u.data (tabs), u.item (pipes, latin-1, 19 genre flags), u.genre."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for content_id, title, genres in movies:
        unknown = set(genres) - set(ML100K_GENRES)
        if unknown:
            raise ValueError(f"not ml-100k genres: {sorted(unknown)}")
        flags = ["1" if g in genres or (g == "unknown" and not genres) else "0" for g in ML100K_GENRES]
        year = title.rstrip()[-5:-1] if title.rstrip().endswith(")") else ""
        date = f"01-Jan-{year}" if year.isdigit() else ""
        lines.append("|".join([str(content_id), title, date, "", "http://example.invalid/", *flags]))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    data = "".join(f"{u}\t{i}\t{int(stars)}\t{ts}\n" for u, i, stars, ts in ratings)
    (folder / "u.data").write_text(data, encoding="latin-1")
    if with_genre_file:
        genre = "".join(f"{g}|{n}\n" for n, g in enumerate(ML100K_GENRES)) + "\n"
        (folder / "u.genre").write_text(genre, encoding="latin-1")
    return folder


def write_1m(
    folder: Path, movies: Sequence[Movie] = TINY_MOVIES, ratings: Sequence[Rating] = TINY_RATINGS
) -> Path:
    """ml-1m layout: movies.dat and ratings.dat with '::' separators, latin-1."""
    folder.mkdir(parents=True, exist_ok=True)
    movie_lines = "".join(f"{c}::{t}::{'|'.join(g)}\n" for c, t, g in movies)
    (folder / "movies.dat").write_bytes(movie_lines.encode("latin-1"))
    rating_lines = "".join(f"{u}::{i}::{int(stars)}::{ts}\n" for u, i, stars, ts in ratings)
    (folder / "ratings.dat").write_text(rating_lines, encoding="latin-1")
    return folder


WRITERS = {"ml-latest": write_latest, "ml-100k": write_100k, "ml-1m": write_1m}
_SYNTH_GENRES = ("Action", "Adventure", "Comedy", "Drama", "Romance", "Sci-Fi", "Thriller", "Horror")


def synthetic_dataset(
    n_users: int = 30, n_items: int = 40, seed: int = 0, follow_p: float = 0.8
) -> tuple[list[Movie], list[Rating]]:
    """Movies and ratings where a viewer mostly watches item i+1 after item i.

    Each viewer starts at a random item in the first half of the catalog and
    watches 6..15 distinct items; with probability `follow_p` the next one is the
    successor of the current one (if unseen), otherwise a random unseen item.
    Ratings are whole stars (valid in every layout); timestamps interleave viewers.
    """
    rng = np.random.default_rng(seed)
    movies: list[Movie] = []
    for i in range(1, n_items + 1):
        genres = (_SYNTH_GENRES[i % len(_SYNTH_GENRES)], _SYNTH_GENRES[(i * 3 + 1) % len(_SYNTH_GENRES)])
        title = f"Synthetic Movie {i} ({1970 + i % 50})"
        if i == 1:
            title = "Crème, Brûlée (1999)"  # a comma and latin-1 accents
        movies.append((i, title, tuple(dict.fromkeys(genres))))
    ratings: list[Rating] = []
    for user in range(1, n_users + 1):
        n_watch = int(rng.integers(6, 16))
        current = int(rng.integers(1, n_items // 2 + 1))
        seen = [current]
        while len(seen) < min(n_watch, n_items):
            successor = current % n_items + 1
            if rng.random() < follow_p and successor not in seen:
                current = successor
            else:
                unseen = [i for i in range(1, n_items + 1) if i not in seen]
                current = int(rng.choice(unseen))
            seen.append(current)
        ts = 1_000_000 + user * 37 + int(rng.integers(0, 500))
        for item in seen:
            ratings.append((user, item, float(rng.integers(1, 6)), ts))
            ts += int(rng.integers(60, 5000))
    return movies, ratings


def write_fixture(layout: str, folder: Path, n_users: int = 30, n_items: int = 40, seed: int = 0) -> Path:
    """Write the synthetic dataset in `layout` ('ml-latest', 'ml-100k' or 'ml-1m') into `folder`."""
    if layout not in WRITERS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(WRITERS)}")
    movies, ratings = synthetic_dataset(n_users, n_items, seed)
    if layout == "ml-latest":
        return write_latest(folder, movies, ratings, tags=[(1, 2, "Sequel", 5), (2, 2, "sequel", 6)])
    return WRITERS[layout](folder, movies, ratings)
