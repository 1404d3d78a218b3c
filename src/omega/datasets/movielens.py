"""Load a MovieLens dataset folder: the catalog (items) and the ratings stream.

Three layouts are read, chosen by what the folder holds:

- ``ml-latest`` / ``ml-latest-small``: ``movies.csv`` + ``ratings.csv`` (+ optional
  ``tags.csv``), UTF-8 CSV with quoted titles that may contain commas.
- ``ml-100k``: ``u.data`` (tab-separated ``user item rating ts``) + ``u.item``
  (pipe-separated, latin-1, 19 genre flags) + optional ``u.genre``.
- ``ml-1m`` (and ml-10m): ``ratings.dat`` + ``movies.dat`` (+ optional ``tags.dat``),
  ``::``-separated, latin-1.

Titles are returned without their trailing ``(1995)``; the year goes to
``CatalogItem.year``. The "no genre" markers (``(no genres listed)``, ml-100k's
``unknown``) become an empty genre tuple.

Ratings are sorted by timestamp; ratings with the same timestamp keep their
order in the file (a stable sort). Every MovieLens file lists ratings grouped by
user, so the tie-break is deterministic and the same on every run.

Parsing is vectorised with numpy on the happy path; only when that fails is the
file walked line by line to name the first bad line in the error.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from omega.brain.records import CatalogItem
from omega.errors import OmegaError

LAYOUTS = ("ml-latest", "ml-100k", "ml-1m")
MAX_TAGS_PER_ITEM = 5

# ml-100k's genre order, used when the folder has no u.genre file.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
_NO_GENRE = {"(no genres listed)", "unknown", ""}
# "Title (1995)", also "Title (2006–2007)" for series; trailing blanks occur in the data.
_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\)\s*$")


@dataclass(frozen=True)
class Ratings:
    """All ratings as parallel arrays in stable time order (see module docstring)."""

    user: np.ndarray  # int32, user id as in the file
    item: np.ndarray  # int32, content id as in the file
    rating: np.ndarray  # float32 stars
    timestamp: np.ndarray  # int64 Unix seconds

    def __len__(self) -> int:
        return int(self.user.shape[0])


class RatingEvent(NamedTuple):
    """One rating, read as one viewing episode of one viewer."""

    user: int
    content_id: int
    rating: float
    timestamp: int


@dataclass(frozen=True)
class MovieLensData:
    """A loaded MovieLens folder."""

    path: Path
    layout: str  # one of LAYOUTS
    items: tuple[CatalogItem, ...]  # sorted by content_id
    ratings: Ratings

    @property
    def item_ids(self) -> np.ndarray:
        """Content ids of the whole catalog, ascending (int32)."""
        return np.fromiter((it.content_id for it in self.items), dtype=np.int32, count=len(self.items))

    def item_by_id(self) -> dict[int, CatalogItem]:
        return {it.content_id: it for it in self.items}

    def iter_events(self) -> Iterator[RatingEvent]:
        """Every rating as an event, in the stable time order."""
        r = self.ratings
        for u, i, s, t in zip(r.user.tolist(), r.item.tolist(), r.rating.tolist(), r.timestamp.tolist()):
            yield RatingEvent(u, i, s, t)


def detect_layout(path: Path) -> str:
    """Name the layout of a MovieLens folder, or raise OmegaError."""
    if not path.is_dir():
        raise OmegaError(f"MovieLens folder not found: {path}")
    if (path / "movies.csv").is_file() and (path / "ratings.csv").is_file():
        return "ml-latest"
    if (path / "u.data").is_file() and (path / "u.item").is_file():
        return "ml-100k"
    if (path / "movies.dat").is_file() and (path / "ratings.dat").is_file():
        return "ml-1m"
    raise OmegaError(
        f"{path} is not a MovieLens folder: expected movies.csv+ratings.csv (ml-latest), "
        "u.data+u.item (ml-100k) or movies.dat+ratings.dat (ml-1m)"
    )


def load_movielens(path: str | Path, *, max_tags: int = MAX_TAGS_PER_ITEM) -> MovieLensData:
    """Load catalog and ratings from a MovieLens folder of any supported layout."""
    folder = Path(path)
    layout = detect_layout(folder)
    if layout == "ml-latest":
        items, ratings = _load_latest(folder, max_tags)
    elif layout == "ml-100k":
        items, ratings = _load_100k(folder)
    else:
        items, ratings = _load_1m(folder, max_tags)
    return MovieLensData(path=folder, layout=layout, items=items, ratings=ratings)


# ---------------------------------------------------------------- layouts


def _load_latest(folder: Path, max_tags: int) -> tuple[tuple[CatalogItem, ...], Ratings]:
    movies, tags = _movies_and_tags(folder, "csv")
    ratings_file = folder / "ratings.csv"
    text = _read_text(ratings_file, "utf-8")
    ratings = _parse_ratings(text, ratings_file, ",", header=("userId", "movieId", "rating", "timestamp"))
    items = _catalog(movies, {}, tags, max_tags)
    _check_rated_items_known(ratings, movies, ratings_file)
    return items, ratings


def _load_100k(folder: Path) -> tuple[tuple[CatalogItem, ...], Ratings]:
    genre_names = ML100K_GENRES
    genre_file = folder / "u.genre"
    if genre_file.is_file():
        genre_names = _read_100k_genres(genre_file)

    item_file = folder / "u.item"
    movies: dict[int, tuple[str, tuple[str, ...]]] = {}
    release_years: dict[int, int] = {}
    n_fields = 5 + len(genre_names)
    for lineno, line in _lines(item_file, "latin-1"):
        fields = line.split("|")
        if len(fields) != n_fields:
            raise _bad_line(item_file, lineno, f"expected {n_fields} '|'-separated fields, got {len(fields)}")
        content_id = _parse_id(fields[0], item_file, lineno)
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise _bad_line(item_file, lineno, "genre flags must be 0 or 1")
        genres = tuple(g for g, f in zip(genre_names, flags) if f == "1" and g not in _NO_GENRE)
        _add_movie(movies, content_id, fields[1], genres, item_file, lineno)
        # Release date "01-Jan-1995": a fallback year for titles without "(1995)".
        date = fields[2].strip()
        if len(date) >= 4 and date[-4:].isdigit():
            release_years[content_id] = int(date[-4:])

    data_file = folder / "u.data"
    ratings = _parse_ratings(_read_text(data_file, "latin-1"), data_file, "\t", header=None)
    _check_rated_items_known(ratings, movies, data_file)
    return _catalog(movies, release_years, {}, 0), ratings


def _load_1m(folder: Path, max_tags: int) -> tuple[tuple[CatalogItem, ...], Ratings]:
    movies, tags = _movies_and_tags(folder, "dat")
    ratings_file = folder / "ratings.dat"
    ratings = _parse_ratings(_read_text(ratings_file, "latin-1"), ratings_file, "::", header=None)
    _check_rated_items_known(ratings, movies, ratings_file)
    return _catalog(movies, {}, tags, max_tags), ratings


def _movies_and_tags(folder: Path, ext: str) -> tuple[dict[int, tuple[str, tuple[str, ...]]], dict[int, Counter[str]]]:
    """movies.EXT and tags.EXT (if any) of the ml-latest ("csv") and ml-1m/ml-10m ("dat") layouts."""
    movies_file = folder / f"movies.{ext}"
    movies: dict[int, tuple[str, tuple[str, ...]]] = {}
    for lineno, row in _rows(movies_file, ("movieId", "title", "genres")):
        content_id = _parse_id(row[0], movies_file, lineno)
        genres = tuple(g for g in row[2].split("|") if g not in _NO_GENRE)
        _add_movie(movies, content_id, row[1], genres, movies_file, lineno)

    tags: dict[int, Counter[str]] = {}
    tags_file = folder / f"tags.{ext}"  # ml-latest and ml-10m have one; ml-1m does not
    if tags_file.is_file():
        for lineno, row in _rows(tags_file, ("userId", "movieId", "tag", "timestamp")):
            _count_tag(tags, movies, _parse_id(row[1], tags_file, lineno), row[2], tags_file, lineno)
    return movies, tags


# ---------------------------------------------------------------- helpers


def _rows(file: Path, header: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Rows of exactly len(header) fields: a UTF-8 CSV with that header (.csv) or '::'-separated latin-1 lines (.dat)."""
    if file.suffix == ".csv":
        rows, what = _csv_rows(file, header), "fields"
    else:
        rows, what = ((lineno, line.split("::")) for lineno, line in _lines(file, "latin-1")), "'::'-separated fields"
    for lineno, row in rows:
        if len(row) != len(header):
            raise _bad_line(file, lineno, f"expected {len(header)} {what}, got {len(row)}")
        yield lineno, row


def _read_text(file: Path, encoding: str) -> str:
    try:
        return file.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        line = file.read_bytes()[: exc.start].count(b"\n") + 1
        raise _bad_line(file, line, f"not valid {encoding} text") from None
    except OSError as exc:
        raise OmegaError(f"cannot read {file}: {exc.strerror or exc}") from None


def _lines(file: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers."""
    for lineno, line in enumerate(_read_text(file, encoding).splitlines(), start=1):
        if line.strip():
            yield lineno, line


def _csv_rows(file: Path, header: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Data rows of a UTF-8 CSV file whose first row must be `header`."""
    reader = csv.reader(io.StringIO(_read_text(file, "utf-8"), newline=""), strict=True)
    try:
        first = next(reader, None)
        if first is None or tuple(c.strip() for c in first) != header:
            raise _bad_line(file, 1, f"expected header {','.join(header)}")
        for row in reader:
            if row:
                yield reader.line_num, row
    except csv.Error as exc:
        raise _bad_line(file, reader.line_num, f"malformed CSV ({exc})") from None


def _parse_ratings(text: str, file: Path, sep: str, header: tuple[str, ...] | None) -> Ratings:
    lines = text.splitlines()
    first_line = 1
    if header is not None:
        if not lines or tuple(c.strip() for c in lines[0].split(sep)) != header:
            raise _bad_line(file, 1, f"expected header {sep.join(header)}")
        lines = lines[1:]
        first_line = 2
    # Blank lines (a trailing newline, say) carry nothing; keep numbering for errors.
    numbered = [(n, ln) for n, ln in enumerate(lines, start=first_line) if ln.strip()]
    if not numbered:
        raise OmegaError(f"{file}: no ratings")
    rows = [ln.split(sep) for _, ln in numbered]
    try:
        table = np.array(rows, dtype=str)
        if table.ndim != 2 or table.shape[1] != 4:
            raise ValueError
        user = table[:, 0].astype(np.int64)
        item = table[:, 1].astype(np.int64)
        rating = table[:, 2].astype(np.float64)
        timestamp = table[:, 3].astype(np.int64)
    except ValueError:
        _raise_first_bad_rating(numbered, rows, file)
        raise  # unreachable: the walk above always finds the bad line
    bad = ~((user > 0) & (user <= np.iinfo(np.int32).max) & (item > 0) & (item <= np.iinfo(np.int32).max))
    bad |= ~(np.isfinite(rating) & (rating > 0) & (rating <= 5)) | (timestamp < 0)
    if bad.any():
        _raise_first_bad_rating(numbered, rows, file, start=int(np.argmax(bad)))
    order = np.argsort(timestamp, kind="stable")  # stable: ties keep file order
    return Ratings(
        user=user[order].astype(np.int32),
        item=item[order].astype(np.int32),
        rating=rating[order].astype(np.float32),
        timestamp=timestamp[order],
    )


def _raise_first_bad_rating(
    numbered: list[tuple[int, str]], rows: list[list[str]], file: Path, start: int = 0
) -> None:
    for (lineno, _), fields in zip(numbered[start:], rows[start:]):
        if len(fields) != 4:
            raise _bad_line(file, lineno, f"expected 4 fields (user, item, rating, timestamp), got {len(fields)}")
        try:
            user, item, stars, ts = int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])
        except ValueError:
            raise _bad_line(file, lineno, "user, item and timestamp must be integers, rating a number") from None
        if not (0 < user <= np.iinfo(np.int32).max and 0 < item <= np.iinfo(np.int32).max):
            raise _bad_line(file, lineno, "user and item ids must be positive 32-bit integers")
        if not (0 < stars <= 5):  # also rejects nan
            raise _bad_line(file, lineno, f"rating {fields[2]} outside 0..5")
        if ts < 0:
            raise _bad_line(file, lineno, f"negative timestamp {ts}")


def _check_rated_items_known(ratings: Ratings, movies: dict[int, object], file: Path) -> None:
    known = np.fromiter(movies.keys(), dtype=np.int64, count=len(movies))
    unknown = ~np.isin(ratings.item, known)
    if unknown.any():
        missing = np.unique(ratings.item[unknown])
        raise OmegaError(
            f"{file}: {int(unknown.sum())} ratings refer to {missing.size} item(s) missing from the catalog "
            f"(first: {int(missing[0])}); is the catalog file truncated?"
        )


def _read_100k_genres(file: Path) -> tuple[str, ...]:
    names: dict[int, str] = {}
    for lineno, line in _lines(file, "latin-1"):
        parts = line.split("|")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise _bad_line(file, lineno, "expected 'name|index'")
        names[int(parts[1])] = parts[0].strip()
    if sorted(names) != list(range(len(names))):
        raise OmegaError(f"{file}: genre indices must be 0..{len(names) - 1} without gaps")
    return tuple(names[i] for i in range(len(names)))


def _parse_id(text: str, file: Path, lineno: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad_line(file, lineno, f"item id {text!r} is not an integer") from None
    if not 0 < value <= np.iinfo(np.int32).max:
        raise _bad_line(file, lineno, f"item id {value} must be a positive 32-bit integer")
    return value


def _add_movie(
    movies: dict[int, tuple[str, tuple[str, ...]]],
    content_id: int,
    title: str,
    genres: tuple[str, ...],
    file: Path,
    lineno: int,
) -> None:
    if content_id in movies:
        raise _bad_line(file, lineno, f"duplicate item id {content_id}")
    if not title.strip():
        raise _bad_line(file, lineno, "empty title")
    movies[content_id] = (title, genres)


def _count_tag(
    tags: dict[int, Counter[str]], movies: dict[int, object], content_id: int, tag: str, file: Path, lineno: int
) -> None:
    if content_id not in movies:
        raise _bad_line(file, lineno, f"tag for item {content_id}, which is not in the catalog")
    tag = " ".join(tag.lower().split())
    if tag:
        tags.setdefault(content_id, Counter())[tag] += 1


def split_year(title: str) -> tuple[str, int | None]:
    """'Heat (1995)' -> ('Heat', 1995); titles without a year are returned as they are."""
    match = _YEAR_SUFFIX.search(title)
    if match is None:
        return title.strip(), None
    return title[: match.start()].strip(), int(match.group(1))


def _catalog(
    movies: dict[int, tuple[str, tuple[str, ...]]],
    fallback_years: dict[int, int],
    tags: dict[int, Counter[str]],
    max_tags: int,
) -> tuple[CatalogItem, ...]:
    items = []
    for content_id in sorted(movies):
        raw_title, genres = movies[content_id]
        title, year = split_year(raw_title)
        if year is None:
            year = fallback_years.get(content_id)
        # most_common keeps first-seen order among equal counts, so this is deterministic.
        top_tags = tuple(t for t, _ in tags[content_id].most_common(max_tags)) if content_id in tags else ()
        items.append(CatalogItem(content_id=content_id, title=title or raw_title.strip(), genres=genres, year=year, tags=top_tags))
    return tuple(items)


def _bad_line(file: Path, lineno: int, why: str) -> OmegaError:
    return OmegaError(f"{file}, line {lineno}: {why}")
