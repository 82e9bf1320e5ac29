"""``IdIndex`` answers exactly like the ``{id: position}`` dict it replaces."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from feature_store.ids import IdIndex


def _as_dict(ids: list[str]) -> dict[str, int]:
    return {str(i): k for k, i in enumerate(ids)}


CASES = [
    [],
    ["a"],
    ["i10", "i9", "i2", "i100"],  # string order is not the numeric one
    ["b", "a", "b", "c", "a"],  # repeats: the last position wins, as in a dict
    ["", "é", "日本", "a b", "A", "a"],  # empty, non-ASCII, spaces, case
    ["x\0", "x", "y"],  # a trailing NUL, which numpy's strings would drop
]


@pytest.mark.parametrize("ids", CASES)
def test_same_answers_as_a_dict(ids: list[str]) -> None:
    want, got = _as_dict(ids), IdIndex(ids)
    assert len(got) == len(want) and dict(got) == want
    if len(set(ids)) == len(ids):
        assert list(got) == list(want)  # position order
    probes = [*ids, "missing", "", "x\0\0", "i1", "a\0", "A "]
    for key in probes:
        assert got.get(key) == want.get(key)
        assert got.get(key, -1) == want.get(key, -1)
        assert (key in got) == (key in want)
    assert got.positions(probes).tolist() == [want.get(k, -1) for k in probes]
    assert got.positions([]).tolist() == []


def test_known_answers_and_errors() -> None:
    index = IdIndex(np.array(["u3", "u1", "u2"], dtype=object))
    assert index["u1"] == 1 and index.get("u2") == 2 and index.get("u4") is None
    assert index.positions(["u2", "nope", "u3"]).tolist() == [2, -1, 0]
    with pytest.raises(KeyError):
        index["u4"]
    # only strings are ids (a dict of str keys would not find 3 or None either)
    assert index.get(3) is None and 3 not in index and None not in index  # type: ignore[call-overload]
    assert IdIndex(["a\0"]).get("a") is None


def test_random_ids_and_pickle_round_trip() -> None:
    rng = random.Random(7)
    ids = [f"u{rng.randrange(5000)}" for _ in range(3000)]
    want, got = _as_dict(ids), pickle.loads(pickle.dumps(IdIndex(ids), protocol=5))
    probes = [f"u{k}" for k in range(6000)]
    assert [got.get(k) for k in probes] == [want.get(k) for k in probes]
    assert got.positions(probes).tolist() == [want.get(k, -1) for k in probes]
