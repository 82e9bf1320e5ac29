"""Team-draft interleaving (known answers on tiny lists), the win statistics, and a simulated
click model whose better ranker is known."""

from __future__ import annotations

import math
import uuid
from datetime import datetime

import numpy as np
import pytest

from feature_store.interleaving import ListOutcome
from recsys.algorithms.interleaving import list_winner, seed_for, team_draft, winner
from recsys.evaluation.online import sign_test_p, summarize, wilson_interval

A, B = "champion", "challenger"


def test_team_draft_known_answers_over_both_coin_outcomes() -> None:
    # round 1: who picks first decides a/b order; round 2: the champion has only c left
    seen = {
        (d.items, d.teams)
        for d in (team_draft(["a", "b", "c"], ["b", "c", "d"], 4, s) for s in range(200))
    }
    assert seen == {
        (("a", "b", "c", "d"), (A, B, A, B)),
        (("a", "b", "c", "d"), (A, B, B, B)),  # challenger first in round 2 takes c; a is out
        (("b", "a", "c", "d"), (B, A, A, B)),
        (("b", "a", "c", "d"), (B, A, B, B)),
    }


def test_identical_lists_keep_the_order_and_split_each_round() -> None:
    ranking = [f"i{n}" for n in range(10)]
    for seed in range(50):
        d = team_draft(ranking, ranking, 6, seed)
        assert d.items == tuple(ranking[:6])
        assert all({d.teams[r], d.teams[r + 1]} == {A, B} for r in range(0, 6, 2))


def test_disjoint_lists_give_each_round_one_item_of_each() -> None:
    champ, chal = ["a1", "a2", "a3"], ["b1", "b2", "b3"]
    d = team_draft(champ, chal, 5, seed=3)
    assert len(d.items) == 5 and len(set(d.items)) == 5
    for r in range(2):
        assert set(d.items[2 * r : 2 * r + 2]) == {champ[r], chal[r]}
    assert all((item in champ) == (team == A) for item, team in d.team_of().items())


@pytest.mark.parametrize("seed", range(20))
def test_no_duplicates_length_k_both_teams_and_deterministic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    champ = [f"i{n}" for n in rng.permutation(30)[:20]]
    chal = [f"i{n}" for n in rng.permutation(30)[:20]]
    d = team_draft(champ, chal, 10, seed)
    assert len(d.items) == 10 and len(set(d.items)) == 10
    assert set(d.teams) == {A, B} and abs(d.teams.count(A) - d.teams.count(B)) <= 1
    for item, team in d.team_of().items():
        assert item in (champ if team == A else chal)
    assert team_draft(champ, chal, 10, seed) == d


def test_an_exhausted_list_lets_the_other_fill_and_short_unions_stay_short() -> None:
    d = team_draft(["a"], ["b", "c", "d"], 4, seed=1)
    assert sorted(d.items) == ["a", "b", "c", "d"] and d.team_of()["a"] == A
    assert d.teams.count(B) == 3
    assert team_draft(["a", "b"], ["b"], 10, seed=0).items in {("a", "b"), ("b", "a")}
    assert team_draft([], [], 5, seed=0).items == ()
    with pytest.raises(ValueError, match="k must be"):
        team_draft(["a"], ["a"], -1, seed=0)


def test_seed_for_is_stable_and_spreads() -> None:
    rid = "0b7d8a7e-8f4c-4f8e-9a43-6a1f6f3c2b10"
    # the first 8 bytes of its sha256, big-endian: the same on every machine and run
    assert seed_for(rid) == 0xAA506C575CFC49A5 == 12272428107062593957
    d = team_draft(list("abcdef"), list("fedcba"), 6, seed_for(rid))
    assert d.items == ("f", "a", "e", "b", "c", "d")
    assert d.teams == (B, A, B, A, A, B)
    assert len({seed_for(str(uuid.UUID(int=n))) for n in range(100)}) == 100


def test_list_winner() -> None:
    teams = {"a": A, "b": B, "c": A}
    assert list_winner(teams, ["a", "c", "b"]) == A
    assert list_winner(teams, ["b", "b", "b", "a"]) is None  # one click per item
    assert list_winner(teams, ["b", "zz"]) == B  # zz was not in the list
    assert list_winner(teams, []) is None
    assert winner(0, 2) == B and winner(1, 1) is None


def test_wilson_and_sign_test_known_values() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert math.isclose(sign_test_p(8, 2), 112 / 1024)  # 2 * (1 + 10 + 45) / 2**10
    assert sign_test_p(5, 5) == 1.0 and sign_test_p(0, 0) == 1.0
    assert math.isclose(sign_test_p(2, 8), sign_test_p(8, 2))
    assert sign_test_p(600, 400) < 1e-9
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


# -- a simulated click model whose better ranker is known ---------------------------------------


def _simulate(n_users: int, good_a: float, good_b: float, seed: int) -> list[ListOutcome]:
    """Each user has 5 relevant items among 100; a ranker with skill s scores an item
    ``s * relevant + noise``.  The user scans the interleaved top 10 with position bias
    1/(rank+1) and clicks a scanned relevant item with probability 0.7, another with 0.05."""
    rng = np.random.default_rng(seed)
    outcomes = []
    items = np.array([f"i{n}" for n in range(100)])
    for _ in range(n_users):
        relevant = np.zeros(100, dtype=bool)
        relevant[rng.choice(100, 5, replace=False)] = True
        champ = items[np.argsort(-(good_a * relevant + rng.normal(size=100)))][:10]
        chal = items[np.argsort(-(good_b * relevant + rng.normal(size=100)))][:10]
        rid = str(uuid.UUID(int=int(rng.integers(0, 2**63))))
        d = team_draft(list(champ), list(chal), 10, seed_for(rid))
        clicked = [
            item
            for pos, item in enumerate(d.items)
            if rng.random() < 1 / (pos + 1) * (0.7 if relevant[int(item[1:])] else 0.05)
        ]
        teams = d.team_of()
        outcomes.append(
            ListOutcome(
                rid,
                datetime(2026, 1, 1),
                "1",
                "2",
                sum(teams[i] == A for i in clicked),
                sum(teams[i] == B for i in clicked),
            )
        )
    return outcomes


def test_the_better_ranker_wins_with_an_interval_above_half() -> None:
    result = summarize(_simulate(1500, good_a=0.5, good_b=2.0, seed=0))
    assert result["challenger_wins"] > result["champion_wins"]
    assert result["ci95"][0] > 0.5 and result["sign_test_p"] < 0.001
    assert result["verdict"].startswith("the challenger wins")
    # and the other way round: a worse challenger loses
    worse = summarize(_simulate(1500, good_a=2.0, good_b=0.5, seed=1))
    assert worse["ci95"][1] < 0.5 and worse["verdict"].startswith("the champion wins")


@pytest.mark.parametrize("seed", [2, 3])
def test_a_against_a_gives_an_interval_containing_half(seed: int) -> None:
    result = summarize(_simulate(1500, good_a=1.0, good_b=1.0, seed=seed))
    low, high = result["ci95"]
    assert low < 0.5 < high and result["sign_test_p"] > 0.05
    assert result["ties"] > 0 and result["decided"] + result["ties"] == 1500
    assert "no significant preference" in result["verdict"]
