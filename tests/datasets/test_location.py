"""The default data folder: $OMEGA_DATA (the dataset or its parent), else ../shared/data or ./data from here."""

from __future__ import annotations

from pathlib import Path

import pytest

from movielens_fixtures import write_fixture
from omega.datasets import data_dir_candidates, default_data_dir, resolve_data_dir
from omega.errors import OmegaError


def test_omega_data_may_name_the_dataset_or_its_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = write_fixture("ml-latest", tmp_path / "ml-latest-small", n_users=5, n_items=10)
    monkeypatch.setenv("OMEGA_DATA", str(dataset))
    assert default_data_dir() == dataset
    monkeypatch.setenv("OMEGA_DATA", str(tmp_path))
    assert default_data_dir() == dataset


def test_without_omega_data_it_looks_beside_and_below_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMEGA_DATA", raising=False)
    here = tmp_path / "checkout"
    here.mkdir()
    monkeypatch.chdir(here)
    assert data_dir_candidates() == [tmp_path / "shared" / "data" / "ml-latest-small", here / "data" / "ml-latest-small"]
    assert default_data_dir() is None
    local = write_fixture("ml-latest", here / "data" / "ml-latest-small", n_users=5, n_items=10)
    assert default_data_dir() == local
    shared = write_fixture("ml-latest", tmp_path / "shared" / "data" / "ml-latest-small", n_users=5, n_items=10)
    assert default_data_dir() == shared  # ../shared/data comes first


def test_nothing_found_is_one_error_naming_every_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMEGA_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(OmegaError, match="no MovieLens data") as failed:
        resolve_data_dir(None)
    assert str(tmp_path / "nowhere") in str(failed.value)
    assert str(tmp_path / "nowhere" / "ml-latest-small") in str(failed.value)
    given = tmp_path / "given"
    assert resolve_data_dir(given) == given  # an explicit --data is used as given (load_movielens checks it)
