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
        assert run["outranks_because_of_sybils"] is False
    assert few["outranks_item_with_more_support"] is False and many["outranks_item_with_more_support"] is False
    # One id is below k_min: the target is unpublished and sits where it sits with no sybils (content alone
    # orders it above a title 3 honest TVs support, held back by the floor); reported, not hidden.
    assert not one["target_published"] and one["target_rank"] == one["rank_without_sybils"]
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
