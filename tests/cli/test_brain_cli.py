"""`omega brain …` end to end on a tiny ml-latest-style catalog written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omega.cli import main

MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,Jumanji (1995),Adventure|Children|Fantasy
3,"American President, The (1995)",Comedy|Drama|Romance
4,Alien (1979),Horror|Sci-Fi
5,Aliens (1986),Action|Horror|Sci-Fi
6,Heat (1995),Action|Crime|Thriller
7,Finding Nemo (2003),Adventure|Animation|Children|Comedy
8,Notting Hill (1999),Comedy|Romance
9,The Shining (1980),Horror
10,Casino (1995),Crime|Drama
11,Up (2009),Adventure|Animation|Children|Drama
12,Scream (1996),Comedy|Horror|Mystery|Thriller
"""
RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,4,5.0,964982704\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "ml-tiny"
    path.mkdir()
    (path / "movies.csv").write_text(MOVIES)
    (path / "ratings.csv").write_text(RATINGS)
    return path


@pytest.fixture
def db(tmp_path: Path, folder: Path, embedder, capsys) -> Path:
    path = tmp_path / "tv.db"
    assert main(["brain", "--db", str(path), "ingest", "--catalog", str(folder)]) == 0
    capsys.readouterr()
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ingest_watch_recommend_stats(db: Path, capsys):
    code, out, _ = run(capsys, "brain", "--db", str(db), "stats", "--json")
    assert code == 0 and json.loads(out)["catalog"] == 12
    code, out, _ = run(capsys, "brain", "--db", str(db), "watch", "4", "--fraction", "0.95", "--rating", "5", "--json")
    assert code == 0
    episode = json.loads(out)
    assert episode["content_id"] == 4 and episode["title"] == "Alien" and episode["outcome"] == "finished"
    assert episode["reward"] == pytest.approx(0.7 * 0.95 + 0.3)
    code, out, _ = run(capsys, "brain", "--db", str(db), "watch", "8", "--fraction", "0.2", "--disliked")
    assert code == 0 and "Notting Hill" in out
    code, out, _ = run(capsys, "brain", "--db", str(db), "recommend", "--k", "5", "--json", "--hour", "21", "--weekday", "5")
    assert code == 0
    report = json.loads(out)
    recs = report["recommendations"]
    assert report["context"] == {"hour": 21, "weekday": 5, "profile": "default"}
    assert len(recs) == 5 and not {4, 8} & {r["content_id"] for r in recs}
    assert all(r["reasons"] and r["title"] for r in recs)
    code, out, _ = run(capsys, "brain", "--db", str(db), "stats", "--json")
    stats = json.loads(out)
    assert (stats["episodes"], stats["patterns"], stats["catalog_index_vectors"]) == (2, 2, 12)
    code, out, _ = run(capsys, "brain", "--db", str(db), "recommend", "--k", "3")
    assert code == 0 and len(out.strip().splitlines()) == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["watch", "4", "--fraction", "1.5"], "--fraction must be a number in [0, 1]"),
        (["watch", "4", "--fraction", "abc"], "--fraction must be a number"),
        (["watch", "4", "--fraction", "0.5", "--rating", "7"], "--rating must be a number in [0.5, 5]"),
        (["watch", "999", "--fraction", "0.5"], "unknown content id 999"),
        (["watch", "x1", "--fraction", "0.5"], "CONTENT_ID must be an integer"),
        (["recommend", "--k", "0"], "--k must be an integer in 1..100"),
        (["recommend", "--k", "101"], "--k must be an integer in 1..100"),
        (["recommend", "--hour", "24"], "--hour must be an integer in 0..23"),
        (["recommend", "--weekday", "-1"], "--weekday must be an integer in 0..6"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(db: Path, capsys, argv, message):
    code, out, err = run(capsys, "brain", "--db", str(db), *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    # nothing was recorded by a rejected command
    _, out, _ = run(capsys, "brain", "--db", str(db), "stats", "--json")
    assert json.loads(out)["episodes"] == 0


def test_recommend_on_an_empty_brain_and_a_missing_catalog(tmp_path: Path, capsys, embedder):
    code, _, err = run(capsys, "brain", "--db", str(tmp_path / "new.db"), "recommend")
    assert code == 2 and err.strip() == "omega: error: catalog is empty: run omega brain ingest"
    code, _, err = run(capsys, "brain", "--db", str(tmp_path / "new.db"), "ingest", "--catalog", str(tmp_path / "nope"))
    assert code == 2 and "MovieLens folder not found" in err and len(err.strip().splitlines()) == 1


def test_default_db_comes_from_the_environment(tmp_path: Path, folder: Path, capsys, monkeypatch, embedder):
    monkeypatch.setenv("OMEGA_BRAIN_DB", str(tmp_path / "env.db"))
    code, out, _ = run(capsys, "brain", "ingest", "--catalog", str(folder))
    assert code == 0 and json.loads(out)["ingested"] == 12
    assert (tmp_path / "env.db").is_file()


def test_help_everywhere(capsys):
    for argv in (["brain", "--help"], ["brain", "watch", "--help"], ["brain", "recommend", "--help"],
                 ["brain", "ingest", "--help"], ["brain", "stats", "--help"], ["bench", "brain", "--help"]):  # fmt: skip
        code, out, _ = run(capsys, *argv)
        assert code == 0 and "Usage" in out
