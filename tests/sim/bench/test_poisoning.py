"""`omega bench poisoning` on a short grid: the JSON shape of issue 14 and its bar at s = 3 vs 30 honest TVs."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from omega.cli import app
from omega.sim.bench import run_poisoning_bench


def test_three_sybils_against_thirty_honest_tvs_stay_out_of_the_top_10() -> None:
    report = run_poisoning_bench(honest=(30,), sybils=(1, 3, 10))
    one, few, many = report["runs"]
    for run in report["runs"]:
        assert {"honest", "sybils", "target_rank", "target_weight_share", "outranks_item_with_more_support"} <= set(run)
        assert run["outranks_item_with_more_support"] is False and run["outranks_because_of_sybils"] is False
    # One id is below k_min: the target is unpublished, and title 8, which 3 honest TVs lead to from the source
    # (published, but under the support floor c·√60 = 3.5), is ordered above it: both are unscored (content
    # orthogonal, 6e-17 vs 5e-18 of float noise), and among the unscored the held-back support orders. Before
    # the ranking's tiers, MMR's variety term put the target at 17 and title 8 at 91.
    assert not one["target_published"] and one["honest_support_from_source"][8] == 3
    assert one["target_rank"] == one["rank_without_sybils"]
    assert few["target_published"] and (few["target_rank"] is None or few["target_rank"] > 10)
    # Published weight is distinct support: 3 of the published supports out of the source (k_min 3),
    # whatever weight the sybils asked for.
    published = sum(n for n in few["honest_support_from_source"].values() if n >= 3)
    assert few["target_weight_share"] == round(3 / (published + 3), 4)
    # Ten ids do lift the target (the bench can fail): ranked, but under every better-supported title.
    assert many["target_rank"] is not None and many["target_rank"] < (few["target_rank"] or 101)


def test_the_command_prints_one_json_object() -> None:
    result = CliRunner().invoke(app, ["bench", "poisoning", "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)["runs"]) == 8
