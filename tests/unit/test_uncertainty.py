"""Bootstrap intervals over users (recsys.evaluation.uncertainty) and their report sections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.evaluation.report import markdown, write_report
from recsys.evaluation.uncertainty import (
    PerUser,
    add_intervals,
    bootstrap_ci,
    paired_diff_ci,
    verdict,
    warnings,
)


def test_interval_is_seeded_and_contains_the_true_mean() -> None:
    rng = np.random.default_rng(7)
    users = rng.normal(0.05, 0.1, size=400)  # true mean difference 0.05
    first = bootstrap_ci(users, 1000, seed=3)
    assert first == bootstrap_ci(users, 1000, seed=3)  # deterministic
    assert first != bootstrap_ci(users, 1000, seed=4)
    assert first.low < first.mean < first.high
    # the half-width is about 1.96 standard errors (0.1 / sqrt(400) = 0.005)
    assert (first.high - first.low) / 2 == pytest.approx(1.96 * 0.005, rel=0.2)
    assert first.n == 400 and verdict(first) == "helps"


def test_intervals_cover_the_true_difference_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(11)
    hits = 0
    for k in range(200):
        ranker = rng.uniform(0, 0.4, size=150)
        diff = paired_diff_ci(ranker + rng.normal(0.03, 0.1, size=150), ranker, 400, seed=k)
        hits += diff.low <= 0.03 <= diff.high
    assert 0.89 <= hits / 200 <= 0.99


def test_paired_difference_cancels_shared_user_difficulty() -> None:
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.0, 0.6, size=300)  # varies a lot between users
    ablation = difficulty
    ranker = difficulty - 0.01 + rng.normal(0, 0.005, size=300)  # slightly but surely worse
    diff = paired_diff_ci(ranker, ablation, 500, seed=1)
    assert diff.high < 0 and verdict(diff) == "hurts"
    separate = bootstrap_ci(ranker, 500, seed=1)
    assert diff.high - diff.low < (separate.high - separate.low) / 5
    with pytest.raises(ValueError, match="same users"):
        paired_diff_ci(ranker, ablation[:-1])
    empty = bootstrap_ci(np.array([]))
    assert empty.n == 0 and verdict(empty) == "no users"


def _report(hurts: bool) -> tuple[dict, dict[str, PerUser], dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    n = 200
    base = rng.uniform(0, 0.5, size=n)
    delta = -0.02 if hurts else 0.0
    per_user = {
        "ranker_no_text": PerUser(
            {k: base for k in ("ndcg@10", "recall@10", "recall@50", "mrr@10")}, base[:50]
        ),
        "ranker": PerUser(
            {k: base + delta for k in ("ndcg@10", "recall@10", "recall@50", "mrr@10")},
            base[:50] + delta,
        ),
    }
    masks = {"0-29": np.arange(n) < 120, "30+": np.arange(n) >= 120}
    systems = {}
    for name, pu in per_user.items():
        m: dict = {k: float(v.mean()) for k, v in pu.values.items()}
        m.update(
            {
                "coverage@10": 0.1,
                "cold_ndcg@10": float(pu.cold.mean()),
                "cold_users": 50,
                "users": n,
            }
        )
        m["ndcg@10_by_history"] = {
            b: {"ndcg@10": float(pu.values["ndcg@10"][mask].mean()), "users": int(mask.sum())}
            for b, mask in masks.items()
        }
        systems[name] = m
    return {"protocol": "movielens-v1", "systems": systems, "skipped": {}}, per_user, masks


def test_report_warns_in_words_when_text_hurts(tmp_path: Path) -> None:
    report, per_user, masks = _report(hurts=True)
    add_intervals(report, per_user, masks, resamples=200, seed=0)
    assert report["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95}
    slices = report["text_effect"]["slices"]
    assert set(slices) == {"overall", "history 0-29", "history 30+", "cold items"}
    assert all(
        s["verdict"] == "hurts" and s["mean"] == pytest.approx(-0.02) for s in slices.values()
    )
    ci = report["systems"]["ranker"]["ci"]["ndcg@10"]
    assert ci[0] < report["systems"]["ranker"]["ndcg@10"] < ci[1]
    assert len(report["systems"]["ranker"]["ndcg@10_by_history"]["30+"]["ci"]) == 2
    assert len(warnings(report)) == 4
    md = markdown(report)
    assert "> **WARNING** Text hurts on overall (200 users)" in md
    assert "Text hurts on cold items (50 users)" in md
    assert "| overall | 200 | -0.0200 |" in md and "| hurts |" in md
    files = write_report(report, tmp_path)
    assert tmp_path / "cold_slice.png" in files and (tmp_path / "cold_slice.png").stat().st_size


def test_no_warning_when_text_is_neutral() -> None:
    report, per_user, masks = _report(hurts=False)
    add_intervals(report, per_user, masks, resamples=200, seed=0)
    assert warnings(report) == []
    md = markdown(report)
    assert "WARNING" not in md and "do not measurably help" in md


def test_a_ranker_without_text_has_no_text_effect_to_measure() -> None:
    report, per_user, masks = _report(hurts=False)
    add_intervals(report, per_user, masks, resamples=50, seed=0, text_effect_too=False)
    assert "text_effect" not in report and "ci" in report["systems"]["ranker"]
    report["text_model_version"] = None
    md = markdown(report)
    assert "The champion ranker uses no text features" in md and "Does text help?" not in md
