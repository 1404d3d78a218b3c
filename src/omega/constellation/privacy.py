"""Differential privacy of what the constellation publishes (issue 14), with OpenDP and dp-accounting.

Unit of privacy: one TV (device id) over one day (the aggregation epoch). In an epoch a
device adds at most 1 to the distinct support of any key (the per-epoch flood check), and
to at most `max_keys` keys (edges, pairs, cells: the aggregator refuses more, `use_day_keys`).
So between two neighbouring days (one TV's contributions in or out) the map key → support
differs in ≤ max_keys keys by ≤ 1 each. An embedding pattern is released from one day's
contributions (dp_release.py): its count, its sum of unit vectors clipped to norm 1 and its
sum of success rates move by ≤ 1 each too. So L0 ≤ max_keys, L∞ = 1, and L2 ≤ √max_keys on
the counts and √(2·max_keys) on the patterns' sums (`PARTS_PER_KEY`); one σ noises all of them.

A release adds integer (discrete) Gaussian noise of scale σ to every support (and float
Gaussian noise of the same σ to every pattern's sums) and keeps only the keys whose noised
support exceeds a threshold τ — DP partition selection, OpenDP's
`make_gaussian_threshold` (propose-test-release; a key present on one side only is the δ part).
It is ρ-zCDP with ρ = 3·max_keys / (2σ²) (counts and sums) plus δ_τ; OpenDP converts it to (ε, δ). `calibrate`
finds the smallest σ (and the τ for δ/2) that meets a target (ε, δ) per TV per day;
`budget_over` composes days with dp-accounting's RDP accountant (σ, days → ε over the period).

Noise cost and fleet size: σ depends on ε, δ and max_keys only, not on how many TVs there
are. A key's support grows with the fleet, so the relative error σ/support shrinks as 1/N:
at 610 TVs (the evaluation) most published supports are 3-30 and σ ≈ 10-40 drowns them; at
400M TVs the same σ is noise on supports in the thousands to millions.

The privacy floor's other knob is declared and checked here too: k_min, the distinct TVs a key
needs before it is published (docs/architecture.md §4), for the aggregator, the server settings,
the store's queries, the simulator and the evaluation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from omega.errors import OmegaError

#: Distinct TVs (device ids) a consolidated pattern or edge needs before it is published.
DEFAULT_K_MIN = 3
#: Cap on one embedding-pattern contribution's quality weight (success_rate × uses) and trial count. A TV
#: pushes a pattern only at success ≥ 0.8 over ≥ 10 uses (BrainConfig.high_quality_*), so every honest
#: contribution weighs at least 0.8 × 10 = 8: at this cap each one — honest or not — weighs the same, and a
#: device moves a pattern no more than any one honest TV does (issue 14; bench/pattern_weights.py measured
#: what honest TVs push on the validation split: median 26, p10 10).
DEFAULT_W_MAX = 8.0
#: Keys (edges + derived pairs + cells) one device may add support to per epoch under DP.
DEFAULT_MAX_KEYS = 64


def check_k_min(value: object, name: str = "k_min") -> int:
    """`value` as a k_min (a positive integer), else OmegaError naming `name` (e.g. the CLI's "--k-min")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise OmegaError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _dp():  # noqa: ANN202 — the optional server dependency, imported on first use
    try:
        import opendp.prelude as dp
    except ImportError:  # pragma: no cover - the server extra is installed wherever DP is used
        raise OmegaError("differential privacy needs OpenDP: pip install 'exogenesis-omega[server]'") from None
    dp.enable_features("contrib")
    return dp


def _measurement(scale: float, threshold: int):  # noqa: ANN202
    dp = _dp()
    domain = dp.map_domain(dp.atom_domain(T=dp.String), dp.atom_domain(T=dp.i64))
    metric = dp.l02inf_distance(dp.absolute_distance(T=dp.i64))
    return dp.m.make_gaussian_threshold(domain, metric, scale=float(scale), threshold=int(threshold))


#: Released values per key that one TV-day moves by at most 1 each: the noised count, and for an
#: embedding pattern also its sum of clipped unit vectors (L2) and its sum of success rates.
PARTS_PER_KEY = 3


def _d_in(max_keys: int) -> tuple[int, int, int]:
    """(L0, L2, L∞) of one TV's day on the counts: ≤ max_keys keys, each ±1 (OpenDP takes L2 as an
    integer: rounded up)."""
    return (int(max_keys), math.isqrt(max_keys - 1) + 1, 1)


def _sums_rho(scale: float, max_keys: int) -> float:
    """ρ (zCDP) of the Gaussian noise on the patterns' sums: L2² ≤ (PARTS_PER_KEY − 1)·max_keys per TV-day."""
    return (PARTS_PER_KEY - 1) * max_keys / (2.0 * scale * scale)


@lru_cache(maxsize=256)
def privacy_of(scale: float, threshold: int, max_keys: int, delta: float) -> tuple[float, float]:
    """(ε, δ_total) of one release at noise `scale` and `threshold`, for a total δ (via OpenDP's maps).

    The release is the counts' partition selection ((ρ_c, δ_τ) by OpenDP's map) and the Gaussian on
    the patterns' sums (ρ_s): zCDP adds up to ρ_c + ρ_s, which OpenDP converts to ε at δ − δ_τ."""
    dp = _dp()
    rho, delta_threshold = _measurement(scale, threshold).map(_d_in(max_keys))
    if delta_threshold >= delta:
        return math.inf, float(delta_threshold)
    rho_total = float(rho) + _sums_rho(scale, max_keys)
    # A unit-sensitivity Gaussian whose ρ is rho_total: OpenDP's own zCDP → (ε, δ) conversion of it.
    unit = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float),
                              scale=1.0 / math.sqrt(2.0 * rho_total))  # fmt: skip
    eps, rest = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(unit), float(delta - delta_threshold)).map(1.0)
    return float(eps), float(rest + delta_threshold)


#: keys per OpenDP call in `DPRelease.release` (the evaluation's ε rows release ~0.5M keys at 610 TVs: in one
#: call OpenDP's copies of them were its peak memory)
RELEASE_CHUNK = 50_000


@dataclass(frozen=True)
class DPRelease:
    """A calibrated release: noise scale σ and threshold τ meeting (epsilon, delta) per TV per day."""

    epsilon: float
    delta: float
    max_keys: int
    scale: float
    threshold: int

    def release(self, supports: Mapping[Hashable, int]) -> dict[Hashable, int]:
        """Noised supports of the keys that pass the threshold (fresh OpenDP noise on every call).

        The keys go to OpenDP `RELEASE_CHUNK` at a time: the mechanism noises and thresholds each key on its
        own, so the chunks' union is distributed as one call over all keys (the same (ε, δ)), while OpenDP's
        copies of the input (Python lists, C strings, its own map) stay a chunk's size, not every key's."""
        names = {_name(k): k for k in supports}
        if len(names) != len(supports):
            raise OmegaError("release keys must have distinct string forms")
        measurement = _measurement(self.scale, self.threshold)
        released: dict[Hashable, int] = {}
        order = list(names)
        for start in range(0, len(order), RELEASE_CHUNK):
            counts = {n: int(supports[names[n]]) for n in order[start : start + RELEASE_CHUNK]}
            released.update((names[n], int(v)) for n, v in measurement(counts).items())
        return released

    def noise_sums(self, sums: Sequence[float]) -> list[float]:
        """Sums (each moved by ≤ 1 per TV-day; accounted in `_d_in`) plus Gaussian noise of scale σ (OpenDP)."""
        dp = _dp()
        if not sums:
            return []
        domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
        gaussian = dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=float(self.scale))
        return [float(v) for v in gaussian([float(v) for v in sums])]


def _name(key: Hashable) -> str:
    return ":".join(map(str, key)) if isinstance(key, tuple) else str(key)


def _threshold_for(scale: float, max_keys: int, delta_part: float) -> int:
    """The smallest threshold whose one-sided keys cost at most delta_part."""
    lo, hi = 1, 1
    while _measurement(scale, hi).map(_d_in(max_keys))[1] > delta_part:
        lo, hi = hi, hi * 2
        if hi > 1 << 40:
            raise OmegaError("no threshold meets delta at this scale")
    while lo < hi:
        mid = (lo + hi) // 2
        if _measurement(scale, mid).map(_d_in(max_keys))[1] <= delta_part:
            hi = mid
        else:
            lo = mid + 1
    return hi


@lru_cache(maxsize=64)
def calibrate(epsilon: float, delta: float, max_keys: int = DEFAULT_MAX_KEYS) -> DPRelease:
    """The least noise (σ to 1 %) whose release is (ε, δ)-DP per TV per day; δ is split half/half."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise OmegaError(f"epsilon must be a positive number, got {epsilon!r}")
    if not 0 < delta < 1e-2:
        raise OmegaError(f"delta must be in (0, 0.01), got {delta!r}")
    if not 1 <= max_keys <= 100_000:
        raise OmegaError(f"max_keys must be in 1..100000, got {max_keys!r}")

    def eps_at(scale: float) -> tuple[float, int]:
        threshold = _threshold_for(scale, max_keys, delta / 2)
        return privacy_of(scale, threshold, max_keys, delta)[0], threshold

    lo, hi = 0.01, 1.0
    while eps_at(hi)[0] > epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e7:
            raise OmegaError(f"cannot reach epsilon {epsilon} at delta {delta}")
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        if eps_at(mid)[0] > epsilon:
            lo = mid
        else:
            hi = mid
    eps, threshold = eps_at(hi)
    return DPRelease(epsilon=float(epsilon), delta=float(delta), max_keys=int(max_keys), scale=hi, threshold=threshold)


def budget_over(release: DPRelease, days: int) -> float:
    """ε over `days` daily releases at the same δ (dp-accounting RDP accountant; Gaussian part)."""
    return budget_of([release] * int(days))


def budget_of(releases: Sequence[DPRelease]) -> float:
    """ε at the largest δ of `releases` after composing them all (dp-accounting RDP accountant).

    Each release is a Gaussian mechanism of noise multiplier σ / L2 (the L2 sensitivity of `_d_in`)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    if not releases:
        return 0.0
    accountant = RdpAccountant()
    for release in releases:
        sensitivity = math.sqrt(PARTS_PER_KEY * release.max_keys)  # the L2 of one TV-day, counts and sums
        accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier=release.scale / sensitivity))
    return float(accountant.get_epsilon(max(r.delta for r in releases)))
