"""Loading MovieLens folders in each layout, and rejecting bad ones clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omega.brain.records import CatalogItem
from omega.datasets.movielens import load_movielens, split_year
from omega.errors import OmegaError
from movielens_fixtures import LAYOUTS, TINY_MOVIES, TINY_RATINGS, write_100k, write_1m, write_fixture, write_latest

WRITE = {"ml-latest": write_latest, "ml-100k": write_100k, "ml-1m": write_1m}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tiny_catalog_in_every_layout(tmp_path: Path, layout: str) -> None:
    data = load_movielens(WRITE[layout](tmp_path))
    assert data.layout == layout
    assert [it.content_id for it in data.items] == [1, 2, 3, 5]
    by_id = data.item_by_id()
    assert by_id[2] == CatalogItem(2, "American President, The", ("Comedy", "Drama", "Romance"), 1995, by_id[2].tags)
    assert by_id[3].title == "Cité des enfants perdus, La"
    assert by_id[3].genres == ("Fantasy", "Sci-Fi")
    assert by_id[1].genres == ("Adventure", "Animation", "Comedy")
    assert by_id[5] == CatalogItem(5, "Babylon 5", (), None, ())
    np.testing.assert_array_equal(data.item_ids, [1, 2, 3, 5])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ratings_sorted_by_time_with_file_order_tie_break(tmp_path: Path, layout: str) -> None:
    r = load_movielens(WRITE[layout](tmp_path)).ratings
    # TINY_RATINGS sorted by timestamp, ties in file order.
    expected = sorted(range(len(TINY_RATINGS)), key=lambda n: (TINY_RATINGS[n][3], n))
    np.testing.assert_array_equal(r.user, [TINY_RATINGS[n][0] for n in expected])
    np.testing.assert_array_equal(r.item, [TINY_RATINGS[n][1] for n in expected])
    np.testing.assert_array_equal(r.timestamp, [TINY_RATINGS[n][3] for n in expected])
    np.testing.assert_allclose(r.rating, [TINY_RATINGS[n][2] for n in expected])
    assert (r.user.dtype, r.item.dtype, r.rating.dtype, r.timestamp.dtype) == (
        np.int32, np.int32, np.float32, np.int64,
    )
    assert len(r) == len(TINY_RATINGS)


def test_iter_events_follow_time_order(tmp_path: Path) -> None:
    events = list(load_movielens(write_latest(tmp_path)).iter_events())
    assert [e.timestamp for e in events] == sorted(e[3] for e in TINY_RATINGS)
    assert events[0] == (3, 2, 4.0, 10)
    assert events[0].content_id == 2


def test_latest_tags_are_aggregated_lower_cased_most_frequent_first(tmp_path: Path) -> None:
    by_id = load_movielens(write_latest(tmp_path)).item_by_id()
    assert by_id[1].tags == ("pixar", "funny, clever")
    assert by_id[2].tags == ("politics",)
    assert by_id[3].tags == ()


def test_latest_without_tags_file(tmp_path: Path) -> None:
    data = load_movielens(write_latest(tmp_path, tags=None))
    assert all(it.tags == () for it in data.items)


def test_10m_tags_dat_is_read_like_latest_tags_csv(tmp_path: Path) -> None:
    folder = write_1m(tmp_path)
    (folder / "tags.dat").write_text("1::1::Pixar::5\n2::1::pixar::6\n1::2::politics::7\n", encoding="latin-1")
    by_id = load_movielens(folder).item_by_id()
    assert by_id[1].tags == ("pixar",)
    assert by_id[2].tags == ("politics",)


@pytest.mark.parametrize(
    ("layout", "file", "line", "expected"),
    [
        ("ml-latest", "tags.csv", "1,2,three,fields,five\n", "expected 4 fields, got 5"),
        ("ml-1m", "movies.dat", "9::No genres\n", "expected 3 '::'-separated fields, got 2"),
        ("ml-1m", "tags.dat", "1::2::tag\n", "expected 4 '::'-separated fields, got 3"),
    ],
)
def test_a_line_with_the_wrong_field_count_is_named(tmp_path: Path, layout: str, file: str, line: str, expected: str) -> None:
    folder = WRITE[layout](tmp_path)
    path = folder / file
    text = (path.read_text(encoding="latin-1") if path.exists() else "") + line
    path.write_text(text, encoding="latin-1")
    with pytest.raises(OmegaError) as err:
        load_movielens(folder)
    assert f"{file}, line {text.count(chr(10))}: {expected}" in str(err.value)


def test_half_star_ratings_in_latest(tmp_path: Path) -> None:
    data = load_movielens(write_latest(tmp_path, ratings=[(1, 1, 3.5, 5), (1, 2, 0.5, 6)]))
    np.testing.assert_allclose(data.ratings.rating, [3.5, 0.5])


def test_100k_without_genre_file_uses_standard_genres(tmp_path: Path) -> None:
    data = load_movielens(write_100k(tmp_path, with_genre_file=False))
    assert data.item_by_id()[2].genres == ("Comedy", "Drama", "Romance")


def test_100k_year_falls_back_to_release_date(tmp_path: Path) -> None:
    folder = write_100k(tmp_path, movies=TINY_MOVIES[:1], ratings=[(1, 1, 4, 1)])
    line = (folder / "u.item").read_text(encoding="latin-1").replace("Toy Story (1995)", "Toy Story")
    (folder / "u.item").write_text(line, encoding="latin-1")
    assert load_movielens(folder).items[0].year == 1995


@pytest.mark.parametrize("layout", LAYOUTS)
def test_synthetic_fixture_loads_in_every_layout(tmp_path: Path, layout: str) -> None:
    data = load_movielens(write_fixture(layout, tmp_path))
    assert len(data.items) == 40
    assert np.unique(data.ratings.user).size == 30
    assert np.all(np.diff(data.ratings.timestamp) >= 0)
    assert data.item_by_id()[1].title == "Crème, Brûlée"
    assert len(data.item_by_id()[2].genres) == 2


@pytest.mark.parametrize(
    "title, expected",
    [
        ("Heat (1995)", ("Heat", 1995)),
        ("Death Note: Desu nôto (2006–2007)", ("Death Note: Desu nôto", 2006)),
        ("Babylon 5", ("Babylon 5", None)),
        ("Nocturnal Animals (2016) ", ("Nocturnal Animals", 2016)),
        ("2001: A Space Odyssey (1968)", ("2001: A Space Odyssey", 1968)),
    ],
)
def test_split_year(title: str, expected: tuple[str, int | None]) -> None:
    assert split_year(title) == expected


# ---------------------------------------------------------------- errors


def test_unknown_layout_names_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "something.txt").write_text("hello")
    with pytest.raises(OmegaError, match="not a MovieLens folder"):
        load_movielens(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(OmegaError, match="not found"):
        load_movielens(tmp_path / "nope")


def _error(folder: Path) -> str:
    with pytest.raises(OmegaError) as info:
        load_movielens(folder)
    return str(info.value)


def test_truncated_ratings_line_is_named(tmp_path: Path) -> None:
    folder = write_latest(tmp_path)
    with open(folder / "ratings.csv", "a", encoding="utf-8") as f:
        f.write("7,1,4.0,123\n8,2")  # cut off mid-line
    message = _error(folder)
    assert "ratings.csv, line 10" in message and "expected 4 fields" in message


def test_non_numeric_rating_is_named(tmp_path: Path) -> None:
    folder = write_1m(tmp_path)
    text = (folder / "ratings.dat").read_text(encoding="latin-1").splitlines()
    text[2] = "1::2::great::200"
    (folder / "ratings.dat").write_text("\n".join(text) + "\n", encoding="latin-1")
    assert "ratings.dat, line 3" in _error(folder)


def test_out_of_range_rating_is_named(tmp_path: Path) -> None:
    folder = write_100k(tmp_path, ratings=[(1, 1, 4, 1), (1, 2, 9, 2)])
    message = _error(folder)
    assert "u.data, line 2" in message and "outside" in message


def test_rating_for_item_missing_from_truncated_catalog(tmp_path: Path) -> None:
    folder = write_latest(tmp_path, movies=TINY_MOVIES[:2], tags=None)
    message = _error(folder)
    assert "ratings.csv" in message and "missing from the catalog" in message


def test_bad_header(tmp_path: Path) -> None:
    folder = write_latest(tmp_path)
    (folder / "movies.csv").write_text("id,name\n1,x\n", encoding="utf-8")
    assert "movies.csv, line 1" in _error(folder)


def test_unterminated_quote_in_movies_csv(tmp_path: Path) -> None:
    folder = write_latest(tmp_path, tags=None)
    with open(folder / "movies.csv", "a", encoding="utf-8") as f:
        f.write('9,"Broken, title (1999),Drama\n')
    assert "movies.csv" in _error(folder)


def test_wrong_genre_flag_count_in_u_item(tmp_path: Path) -> None:
    folder = write_100k(tmp_path)
    with open(folder / "u.item", "a", encoding="latin-1") as f:
        f.write("9|Short (1999)|01-Jan-1999||url|0|1\n")
    message = _error(folder)
    assert "u.item, line 5" in message and "24" in message


def test_duplicate_item_id(tmp_path: Path) -> None:
    folder = write_1m(tmp_path, movies=[*TINY_MOVIES, (1, "Again (2000)", ("Drama",))])
    assert "duplicate item id 1" in _error(folder)


def test_wrong_encoding_is_reported_with_line(tmp_path: Path) -> None:
    folder = write_latest(tmp_path, tags=None)
    with open(folder / "movies.csv", "ab") as f:
        f.write("9,Caf\u00e9 (2000),Drama\n".encode("latin-1"))  # latin-1 where UTF-8 is required
    message = _error(folder)
    assert "movies.csv, line 6" in message and "utf-8" in message


def test_empty_ratings(tmp_path: Path) -> None:
    folder = write_latest(tmp_path, ratings=[], tags=None)
    assert "no ratings" in _error(folder)


def test_real_ml_latest_small(ml_latest_small: Path) -> None:
    data = load_movielens(ml_latest_small)
    assert data.layout == "ml-latest"
    assert len(data.items) == 9742 and len(data.ratings) == 100836
    by_id = data.item_by_id()
    assert by_id[1].title == "Toy Story" and by_id[1].year == 1995 and "pixar" in by_id[1].tags
    assert np.all(np.diff(data.ratings.timestamp) >= 0)
