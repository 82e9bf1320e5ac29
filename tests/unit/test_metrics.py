"""Ranking metrics against values computed by hand."""

import math

import pytest

from recsys.algorithms.metrics import (
    auc,
    coverage_at_k,
    dcg_graded,
    mrr,
    mrr_at_k,
    ndcg_at_k,
    ndcg_graded,
    recall_at_k,
)


def test_ndcg_binary_by_hand() -> None:
    # hits at ranks 1 and 3; 3 relevant items -> ideal has 3 hits in the top 3
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(["a", "x", "b", "y"], {"a", "b", "c"}, 10) == pytest.approx(dcg / idcg)


def test_ndcg_cuts_at_k_and_ideal_caps_at_k() -> None:
    # one hit at rank 2 within k=2; 5 relevant, ideal = 2 hits
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["x", "a", "b"], {"a", "b", "c", "d", "e"}, 2) == pytest.approx(expected)
    assert ndcg_at_k(["x", "y", "a"], {"a"}, 2) == 0.0


def test_ndcg_perfect_and_empty() -> None:
    assert ndcg_at_k(["a", "b"], {"a", "b"}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["a"], set(), 10) == 0.0
    assert ndcg_at_k([], {"a"}, 10) == 0.0


def test_recall_and_mrr() -> None:
    ranked = ["x", "a", "y", "b"]
    assert recall_at_k(ranked, {"a", "b", "c", "d"}, 2) == pytest.approx(0.25)
    assert recall_at_k(ranked, {"a", "b", "c", "d"}, 4) == pytest.approx(0.5)
    assert mrr_at_k(ranked, {"b", "a"}, 10) == pytest.approx(0.5)
    assert mrr_at_k(ranked, {"b"}, 3) == 0.0


def test_coverage() -> None:
    assert coverage_at_k([["a", "b", "c"], ["a", "d"]], 10, 2) == pytest.approx(3 / 10)
    assert coverage_at_k([["a"]], 0, 10) == 0.0


def test_auc_by_hand_with_ties() -> None:
    # positives score 0.9 and 0.5; negatives 0.5 and 0.1: pairs (0.9>0.5, 0.9>0.1, 0.5=0.5, 0.5>0.1)
    assert auc([1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(3.5 / 4)
    assert auc([1, 0], [0.1, 0.9]) == 0.0
    assert math.isnan(auc([1, 1], [0.1, 0.9]))


def test_mind_mrr_and_ndcg_by_hand() -> None:
    labels, scores = [0, 1, 0, 1], [0.4, 0.3, 0.2, 0.1]  # clicks at ranks 2 and 4
    assert mrr(labels, scores) == pytest.approx((1 / 2 + 1 / 4) / 2)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert dcg_graded(labels, scores, 10) == pytest.approx(dcg)
    assert ndcg_graded(labels, scores, 10) == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    # at k=2 only the rank-2 click counts
    assert ndcg_graded(labels, scores, 2) == pytest.approx(
        (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    )
    assert math.isnan(ndcg_graded([0, 0], [1, 2], 5))


def test_mind_metrics_keep_logged_order_on_ties() -> None:
    # equal scores: the first listed item stays first
    assert mrr([1, 0, 0], [0.5, 0.5, 0.5]) == pytest.approx(1.0)
    assert mrr([0, 0, 1], [0.5, 0.5, 0.5]) == pytest.approx(1 / 3)
