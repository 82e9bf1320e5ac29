"""Bootstrap confidence intervals over users for the full-ranking report.

Every protocol metric except coverage is a mean over users, so its uncertainty comes from which
users happen to be in the test set: resample the users with replacement ``resamples`` times
(seeded), take the metric's mean in each resample, and report the 2.5th and 97.5th percentiles
(a 95% percentile interval).  A paired difference (ranker - ranker_no_text) resamples the
per-user *differences*, so the users' shared difficulty cancels and the interval is much
narrower than the two separate intervals suggest.

Resamples depend only on the seed and the number of users in the slice, so every system of a
slice is resampled with the same draws and a report is reproducible from its seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95
# metrics averaged over all evaluated users (cold_ndcg@10: over users with a cold positive)
USER_METRICS: tuple[str, ...] = ("ndcg@10", "recall@10", "recall@50", "mrr@10")
TEXT_PAIR = ("ranker", "ranker_no_text")


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap interval over ``n`` users."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "users": self.n}


def bootstrap_ci(
    values: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = LEVEL
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (one value per user)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(0.0, 0.0, 0.0, 0)
    if resamples <= 0:
        raise ValueError(f"bootstrap resamples must be positive, got {resamples}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    step = max(1, 2_000_000 // n)  # bound the index matrix's memory on large test sets
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(float(x.mean()), float(low), float(high), n)


def paired_diff_ci(
    a: np.ndarray, b: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """Interval of mean(a - b) over users, resampling the users' paired differences."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same users: {a.shape} vs {b.shape}")
    return bootstrap_ci(a - b, resamples, seed)


@dataclass(frozen=True)
class PerUser:
    """One system's per-user metric values, aligned with the protocol's user order."""

    values: Mapping[str, np.ndarray]  # USER_METRICS -> one value per evaluated user
    cold: np.ndarray  # cold_ndcg@10 of the users with a cold positive, in user order


def add_intervals(
    report: dict[str, Any],
    per_user: Mapping[str, PerUser],
    buckets: Mapping[str, np.ndarray],
    resamples: int,
    seed: int,
    *,
    text_effect_too: bool = True,
) -> None:
    """Add ``ci`` entries to every system of ``report`` and (``text_effect_too``: the ranker
    uses text features) the ranker's text effect.

    ``buckets`` maps each history bucket label to a boolean mask over the evaluated users.
    """
    report["bootstrap"] = {"resamples": resamples, "seed": seed, "level": LEVEL}
    for name, pu in per_user.items():
        m = report["systems"][name]
        ci = {k: _pair(bootstrap_ci(v, resamples, seed)) for k, v in pu.values.items()}
        ci["cold_ndcg@10"] = _pair(bootstrap_ci(pu.cold, resamples, seed))
        m["ci"] = ci
        for label, mask in buckets.items():
            bucket = bootstrap_ci(pu.values["ndcg@10"][mask], resamples, seed)
            m["ndcg@10_by_history"][label]["ci"] = _pair(bucket)
    if text_effect_too and all(name in per_user for name in TEXT_PAIR):
        report["text_effect"] = text_effect(
            per_user[TEXT_PAIR[0]], per_user[TEXT_PAIR[1]], buckets, resamples, seed
        )


def text_effect(
    ranker: PerUser,
    ablation: PerUser,
    buckets: Mapping[str, np.ndarray],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """NDCG@10 of ranker - ranker_no_text with its interval: overall, per bucket, cold slice."""
    a, b = ranker.values["ndcg@10"], ablation.values["ndcg@10"]
    slices: dict[str, Interval] = {"overall": paired_diff_ci(a, b, resamples, seed)}
    for label, mask in buckets.items():
        slices[f"history {label}"] = paired_diff_ci(a[mask], b[mask], resamples, seed)
    slices["cold items"] = paired_diff_ci(ranker.cold, ablation.cold, resamples, seed)
    return {
        "pair": list(TEXT_PAIR),
        "metric": "ndcg@10",
        "slices": {k: {**v.as_dict(), "verdict": verdict(v)} for k, v in slices.items()},
    }


def verdict(diff: Interval) -> str:
    """``hurts`` (interval below 0), ``helps`` (above 0), ``unclear`` or ``no users``."""
    if diff.n == 0:
        return "no users"
    if diff.high < 0:
        return "hurts"
    if diff.low > 0:
        return "helps"
    return "unclear"


def warnings(report: Mapping[str, Any]) -> list[str]:
    """One sentence per slice where text features hurt (their interval is below 0)."""
    effect = report.get("text_effect")
    if not effect:
        return []
    out = []
    for label, s in effect["slices"].items():
        if s["verdict"] == "hurts":
            out.append(
                f"Text hurts on {label} ({s['users']} users): ranker - ranker_no_text "
                f"NDCG@10 = {s['mean']:+.4f}, 95% CI [{s['low']:+.4f}, {s['high']:+.4f}] is "
                "entirely below 0, so the ranker ranks worse with its text features than "
                "without them here."
            )
    return out


def _pair(interval: Interval) -> list[float]:
    return [interval.low, interval.high]


def bucket_masks(
    users: Sequence[str], history: Mapping[str, int], bounds: Sequence[tuple[int, int]]
) -> dict[str, np.ndarray]:
    """Boolean masks over ``users`` per history-length bucket, labelled as the report does."""
    hist = np.array([history.get(u, 0) for u in users])
    return {bucket_label(lo, hi): (hist >= lo) & (hist < hi) for lo, hi in bounds}


def bucket_label(lo: int, hi: int) -> str:
    return f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+"
