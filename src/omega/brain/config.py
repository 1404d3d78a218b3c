"""`BrainConfig`: every tunable of a TV brain, with TV defaults, loadable from JSON/TOML.

Unknown keys and out-of-range values raise `OmegaError`, because a typo in a
config file that is silently ignored is a brain that quietly misbehaves.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from omega.errors import OmegaError

INDEX_DTYPES = ("f32", "f16", "i8")
INDEX_BACKENDS = ("usearch", "hnswlib")


@dataclass(frozen=True, slots=True)
class BrainConfig:
    """Tunables of one brain. Defaults suit a TV (one thread, hnswlib f32 HNSW, 10K patterns)."""

    # --- vector index over the catalog (docs/architecture.md §2: M 8..16, ef_construction 100..200)
    index_m: int = 16
    #: 200 (the upper end of docs/architecture.md §2): a better graph than 128 for +0.5 s of build, +0.004 recall at ef 80.
    index_ef_construction: int = 200
    #: ef 96 with hnswlib (same run as below): ef 64/72/80/96/128 gave recall@50 0.950/0.959/0.966/0.975/0.986
    #: (contexts 0.928/0.940/0.951/0.964/0.980) for ~102/106/118/137/177 µs. 80 is the cheapest point with
    #: both query kinds >= 0.95, but its context margin (0.951) is within noise; 96 keeps contexts at 0.964
    #: for ~20 µs more. (usearch f16 before: ef 128, 0.983, ~240-330 µs.)
    index_ef_search: int = 96
    #: f32: hnswlib stores float32 only. (usearch: f16 = f32 recall at every ef for half the memory;
    #: i8 caps recall near 0.94, MODEL_NOTES.)
    index_dtype: str = "f32"
    #: "usearch" or "hnswlib" (f32 only). Measured 2026-11 on ml-latest-small (9,742 real MiniLM
    #: embeddings, 500 item + 500 context queries, exact numpy truth, one thread, same run, medians):
    #: the two build the same graph (same recall at every M/ef_construction/ef), and hnswlib searches
    #: ~15-25 % faster (M 16, ef_c 200, ef 80: 118 vs 135 µs, recall 0.966, contexts 0.951) in 16.4 MB
    #: (f32) vs usearch's 16.9 MB (f16 + slack); its file is 16.4 vs 8.9 MB. Neither meets the 100 µs
    #: budget at recall >= 0.95 on real embeddings (MODEL_NOTES' 68 µs was on synthetic clustered data).
    index_backend: str = "hnswlib"
    index_exact_below: int = 256
    threads: int = 1
    #: SQLite's own page cache of the TV's store, KiB (SQLite's default is 2 MiB). The store's pages are in the OS
    #: page cache anyway; this one saves a ranking's re-reads (the edge rows of its recent items) a system call.
    #: 256: what every simulated TV of the evaluation has run with. On the bench brain -1.8 MB of RSS after the first
    #: recommend (the catalog's load had filled 2 MiB with embedding pages no ranking reads), recommend CPU within
    #: noise (bench/README, issue 13's sixth round).
    store_cache_kib: int = 256

    # --- SkillLibrary
    max_patterns: int = 10_000
    high_quality_success: float = 0.8
    high_quality_min_uses: int = 10
    #: cosine at or above which a watched item updates an existing pattern instead of founding one. 0.6: a
    #: pattern is a taste region (~17 per TV) that gathers the uses a push needs (success >= 0.8, >= 10 uses);
    #: at 0.85 nearly every viewing founds its own and none was ever pushed. Validation (200 viewers, omega eval
    #: --validation): 480 patterns pushed, 37 consolidated per TV, NDCG@10 of the federated TV unchanged
    #: (0.0530 both); the TV without sync drops from 0.0278 to 0.0203 (broader local patterns, w_pattern 0.05).
    pattern_match_threshold: float = 0.6
    #: smallest step of the running mean, so an old pattern still follows a drifting taste
    pattern_min_step: float = 0.02

    # --- docs/architecture.md §2 pattern retrieval score: 0.4·sim + 0.3·success + 0.1·min(uses/1000,1) + 0.2·avg_reward
    pattern_w_similarity: float = 0.4
    pattern_w_success: float = 0.3
    pattern_w_uses: float = 0.1
    pattern_w_reward: float = 0.2

    # --- transitions (order-aware patterns): after a good viewing, the last 5 items each get an edge to it,
    #: decaying by 0.8 per step back (the plateau the centralised transition model found on validation)
    transition_window: int = 5
    transition_decay: float = 0.8
    #: The co-watch upload (issue 13): after a good viewing (the rule of transitions), the pairs (it, each of the
    #: last `cowatch_window` distinct titles) this TV never queued before are pushed, once each (Keyspace.COWATCH);
    #: the constellation refines its neighbours from the pairs >= k_min TVs sent. 0: off. 50 is the window the
    #: offline replay picked (bench/refine_window.py: W 50 +0.0091 over the shipped TV, W 25 within noise). Off: through
    #: the product (validation, tie seeds 0-2 pooled) W 50 with the pulled release at w_refined 2 gave +0.0065
    #: [-0.0001, +0.0142] over the shipped TV, not beyond noise (README "Quality on MovieLens", 2026-12-02).
    cowatch_window: int = 0

    # --- recommend (Recommender's module docstring has the formula)
    #: recent items that propose and score candidates, each weighted recent_decay^i (0 = the latest)
    recent_items: int = 10
    recent_decay: float = 0.7
    #: HNSW neighbours of the query in the candidate pool
    candidates_k: int = 50
    #: most-followed items of the pulled edges in the candidate pool
    popular_k: int = 100
    #: weight of the embedded context text against the mean of recent items in the query vector
    context_weight: float = 0.25
    top_patterns: int = 16
    top_consolidated: int = 16
    #: content cosine cubed: a tie-breaker among collaborative candidates, the whole signal without them
    w_content: float = 0.05
    #: this TV's own "after A, B" (only acts on items it may show again: exclude_watched=False)
    w_local_transition: float = 0.6
    #: published ordered edges ("viewers who watched A watched B next")
    w_global_transition: float = 1.0
    #: published unordered pairs, read raw (reach k_min TVs far more often than ordered edges). On validation
    #: (200 viewers) the refined neighbours learned from the same pairs did better (raw pairs at 3 0.0475,
    #: refined without raw pairs 0.0546, both at 2 0.0513; bench/results/refine-grid-validation.json).
    #: The full test run (610 viewers, bench/results/eval-ml-latest-small.json) did not confirm the refined
    #: neighbours: raw pairs 0.0473 vs refined 0.0451 in the same run (within noise), so raw pairs stay shipped.
    w_global_pair: float = 3.0
    #: the constellation's refined neighbours (EASE over the published pairs; "viewers who liked A also liked B").
    #: The weight of an ordered edge: validation (omega eval --validation, 200 viewers) 0.0556 / 0.0568 / 0.0533 /
    #: 0.0530 at 0.5 / 1 / 2 / 3, all within noise of each other; 0 gives 0.0491.
    #: Off by default: it lifted NDCG@10 on validation but not in the same test run (see w_global_pair).
    w_refined: float = 0.0
    #: Pull the refined neighbours at all (Pull.refined_since). Off while w_refined is 0: the ranking does not
    #: read them, so a TV would only download and store a release it never uses. The evaluation's fleet turns it
    #: on to measure the refined ablation rows (the shipped rows rank the same either way).
    pull_refined: bool = False
    w_pattern: float = 0.05
    #: validation with pushed patterns (threshold 0.6, 200 viewers): 0 / 0.05 / 0.2 gave 0.0530 / 0.0530 / 0.0549
    w_consolidated: float = 0.2
    #: MMR: 1 ranks by score alone, lower trades relevance for variety
    diversity_lambda: float = 0.9
    #: a consolidated pattern with at least this trend score makes its items "trending"
    trend_min_score: float = 0.5
    exclude_watched: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": float, "bool": bool, "str": str}[f.type]  # type: ignore[index]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
                value = float(value)
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise OmegaError(f"brain config: {f.name} must be {f.type}, got {value!r}")
            if expected is float and not math.isfinite(value):
                raise OmegaError(f"brain config: {f.name} must be finite, got {value!r}")
        self._check_ranges()

    def _check_ranges(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise OmegaError(f"brain config: {what}")

        need(2 <= self.index_m <= 64, f"index_m must be in 2..64, got {self.index_m}")
        need(self.index_ef_construction >= 1, "index_ef_construction must be >= 1")
        need(self.index_ef_search >= 1, "index_ef_search must be >= 1")
        need(self.index_dtype in INDEX_DTYPES, f"index_dtype must be one of {INDEX_DTYPES}, got {self.index_dtype!r}")
        need(
            self.index_backend in INDEX_BACKENDS,
            f"index_backend must be one of {INDEX_BACKENDS}, got {self.index_backend!r}",
        )
        need(
            self.index_backend != "hnswlib" or self.index_dtype == "f32",
            f"index_dtype must be 'f32' with index_backend 'hnswlib' (it stores float32), got {self.index_dtype!r}",
        )
        need(self.index_exact_below >= 0, "index_exact_below must be >= 0")
        need(1 <= self.threads <= 64, f"threads must be in 1..64, got {self.threads}")
        cache = self.store_cache_kib
        need(16 <= cache <= 1 << 20, f"store_cache_kib must be in 16..1048576, got {cache}")
        need(self.max_patterns >= 1, "max_patterns must be >= 1")
        need(0.0 <= self.high_quality_success <= 1.0, "high_quality_success must be in [0, 1]")
        need(self.high_quality_min_uses >= 1, "high_quality_min_uses must be >= 1")
        need(-1.0 <= self.pattern_match_threshold <= 1.0, "pattern_match_threshold must be in [-1, 1]")
        need(0.0 < self.pattern_min_step <= 1.0, "pattern_min_step must be in (0, 1]")
        need(1 <= self.transition_window <= 50, "transition_window must be in 1..50")
        need(0 <= self.cowatch_window <= 200, f"cowatch_window must be in 0..200, got {self.cowatch_window}")
        need(0.0 < self.transition_decay <= 1.0, "transition_decay must be in (0, 1]")
        need(1 <= self.recent_items <= 100, "recent_items must be in 1..100")
        need(0.0 < self.recent_decay <= 1.0, "recent_decay must be in (0, 1]")
        need(1 <= self.candidates_k <= 1000, "candidates_k must be in 1..1000")
        need(0 <= self.popular_k <= 1000, "popular_k must be in 0..1000")
        need(0.0 <= self.context_weight <= 1.0, "context_weight must be in [0, 1]")
        need(0 <= self.top_patterns <= 1000, "top_patterns must be in 0..1000")
        need(0 <= self.top_consolidated <= 1000, "top_consolidated must be in 0..1000")
        need(0.0 <= self.diversity_lambda <= 1.0, "diversity_lambda must be in [0, 1]")
        for name in (
            "pattern_w_similarity", "pattern_w_success", "pattern_w_uses", "pattern_w_reward",
            "w_content", "w_local_transition", "w_global_transition", "w_global_pair", "w_refined", "w_pattern",
            "w_consolidated",
        ):  # fmt: skip
            need(0.0 <= getattr(self, name) <= 10.0, f"{name} must be in [0, 10]")

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrainConfig:
        """A config from a mapping of field names (missing keys keep their defaults)."""
        if not isinstance(data, dict):
            raise OmegaError(f"brain config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OmegaError(f"brain config: unknown key(s) {', '.join(map(str, unknown))}")
        return cls(**data)

    @classmethod
    def load(cls, path: Path | str) -> BrainConfig:
        """Read a `.json` or `.toml` file (a `[brain]` table in TOML is accepted too)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise OmegaError(f"cannot read brain config {path}: {exc.strerror or exc}") from None
        try:
            if path.suffix.lower() == ".toml":
                import tomllib  # here, not at the top: a TV that ranks with the defaults never parses TOML (0.6 MB)

                data: Any = tomllib.loads(raw.decode("utf-8"))
                if isinstance(data.get("brain"), dict) and len(data) == 1:
                    data = data["brain"]
            elif path.suffix.lower() == ".json":
                data = json.loads(raw)
            else:
                raise OmegaError(f"brain config {path}: use a .json or .toml file")
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise OmegaError(f"brain config {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
