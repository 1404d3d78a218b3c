"""Differential privacy of publication (issue 14): OpenDP's partition selection, calibrated to (ε, δ)."""

from __future__ import annotations

import math

import pytest

from omega.constellation import privacy
from omega.errors import OmegaError


@pytest.mark.parametrize("epsilon", [8.0, 1.0])
def test_calibration_meets_the_target_per_tv_per_day(epsilon: float) -> None:
    release = privacy.calibrate(epsilon, 1e-6, max_keys=64)
    eps, delta = privacy.privacy_of(release.scale, release.threshold, 64, 1e-6)
    assert eps <= epsilon and delta <= 1e-6
    # ... and close to the least noise that does (5 % less noise breaks the target).
    assert privacy.privacy_of(release.scale / 1.05, release.threshold, 64, 1e-6)[0] > epsilon


def test_less_epsilon_costs_more_noise_and_a_higher_threshold() -> None:
    loose, tight = privacy.calibrate(8.0, 1e-6), privacy.calibrate(1.0, 1e-6)
    assert tight.scale > 4 * loose.scale and tight.threshold > loose.threshold
    # More keys per TV per day: more noise for the same ε.
    assert privacy.calibrate(8.0, 1e-6, max_keys=16).scale < loose.scale


def test_release_keeps_strong_keys_noised_and_drops_weak_ones() -> None:
    release = privacy.calibrate(4.0, 1e-6)
    supports = {(1, 10, 20): 10_000, (1, 10, 21): 3, (3, 10, 20): 5_000}
    out = release.release(supports)
    assert set(out) == {(1, 10, 20), (3, 10, 20)}  # support 3 never passes a threshold of ~60
    assert out[(1, 10, 20)] != 10_000 or out[(3, 10, 20)] != 5_000  # noised (both equal: p ≈ 1e-3)
    assert abs(out[(1, 10, 20)] - 10_000) < 8 * release.scale
    assert release.release({}) == {}


def test_release_in_chunks_covers_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    release = privacy.calibrate(4.0, 1e-6)
    monkeypatch.setattr(privacy, "RELEASE_CHUNK", 3)  # 10 keys: four OpenDP calls
    supports = {(1, i, i + 1): 10_000 + i for i in range(8)} | {(1, 99, 98): 2, (3, 99, 98): 1}
    out = release.release(supports)
    assert set(out) == {(1, i, i + 1) for i in range(8)}  # every strong key, from every chunk; no weak one
    assert all(abs(out[k] - supports[k]) < 8 * release.scale for k in out)


def test_budget_over_days_grows_with_days() -> None:
    release = privacy.calibrate(1.0, 1e-6)
    one, month = privacy.budget_over(release, 1), privacy.budget_over(release, 30)
    assert one <= 1.5 and month > 3 * one and math.isfinite(month)


@pytest.mark.parametrize("args", [(0.0, 1e-6), (-1.0, 1e-6), (math.inf, 1e-6), (1.0, 0.0), (1.0, 0.5)])
def test_bad_parameters_are_one_clear_error(args) -> None:
    with pytest.raises(OmegaError):
        privacy.calibrate(*args)
