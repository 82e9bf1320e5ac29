"""Request parsing rules of the HTTP API (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.errors import PayloadTooLargeError, RequestValidationError
from serving.validation import (
    MAX_CANDIDATES,
    MAX_K,
    check_id,
    parse_events_body,
    parse_rank_body,
    parse_recommendation_query,
)


def q(**params: str | list[str]) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in params.items()}


def test_query_defaults_and_values() -> None:
    assert parse_recommendation_query({}).k == 10
    parsed = parse_recommendation_query(q(k="25", exclude_seen="false", genre="Drama", explain="1"))
    assert (parsed.k, parsed.exclude_seen, parsed.genre, parsed.explain) == (
        25,
        False,
        "Drama",
        True,
    )


@pytest.mark.parametrize("k", ["0", "-1", "101", "ten", "", "1.5", "9" * 40])
def test_query_rejects_bad_k(k: str) -> None:
    with pytest.raises(RequestValidationError, match="k must"):
        parse_recommendation_query(q(k=k))


def test_query_rejects_unknown_repeated_and_bad_bools() -> None:
    with pytest.raises(RequestValidationError, match="unknown query parameter"):
        parse_recommendation_query(q(limit="3"))
    with pytest.raises(RequestValidationError, match="given 2 times"):
        parse_recommendation_query(q(k=["1", "2"]))
    with pytest.raises(RequestValidationError, match="explain must be true or false"):
        parse_recommendation_query(q(explain="maybe"))


def test_rank_body_parses_and_dedupes_candidates() -> None:
    req = parse_rank_body({"user_id": "u1", "candidates": ["a", "b", "a"], "k": 2, "explain": True})
    assert req.candidates == ("a", "b") and req.k == 2 and req.explain and req.history == ()
    cold = parse_rank_body({"history": ["x"], "candidates": ["a"]})
    assert cold.user_id is None and cold.history == ("x",)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ([], "must be a JSON object"),
        ({"candidates": ["a"], "extra": 1}, "unknown field"),
        ({}, "candidates is required"),
        ({"candidates": []}, "at least one"),
        ({"candidates": "a"}, "must be a list"),
        ({"candidates": [1.5]}, "must be a string or an integer"),
        ({"candidates": [True]}, "must be a string or an integer"),
        ({"candidates": [""]}, "1 to 256"),
        ({"candidates": ["a\x00"]}, "control characters"),
        ({"candidates": ["a"], "k": True}, "k must be an integer"),
        ({"candidates": ["a"], "k": 2.0}, "k must be an integer"),
        ({"candidates": ["a"], "k": MAX_K + 1}, "k must be from"),
        ({"candidates": ["a"], "explain": "yes"}, "explain must be"),
        ({"candidates": ["a"], "user_id": {"id": 7}}, "user_id must be a string or an integer"),
    ],
)
def test_rank_body_rejections(body: object, match: str) -> None:
    with pytest.raises(RequestValidationError, match=match):
        parse_rank_body(body)


def test_rank_body_too_many_candidates_is_413() -> None:
    with pytest.raises(PayloadTooLargeError):
        parse_rank_body({"candidates": [f"i{n}" for n in range(MAX_CANDIDATES + 1)]})


def test_events_body() -> None:
    assert parse_events_body({"events": [{"a": 1}]}, max_events=3) == [{"a": 1}]
    with pytest.raises(PayloadTooLargeError, match="over the limit of 3"):
        parse_events_body({"events": [{}] * 4}, max_events=3)
    for bad in ({"events": {}}, {"events": []}, {}, {"events": [], "x": 1}, "events"):
        with pytest.raises(RequestValidationError):
            parse_events_body(bad, max_events=3)


def test_check_id() -> None:
    assert check_id("42", "user_id") == "42"
    with pytest.raises(RequestValidationError):
        check_id("x" * 257, "user_id")


@given(
    st.dictionaries(st.text(max_size=12), st.lists(st.text(max_size=20), max_size=3), max_size=4)
)
def test_query_parser_only_raises_validation_errors(args: dict[str, list[str]]) -> None:
    try:
        parsed = parse_recommendation_query(args)
    except RequestValidationError:
        return
    assert 1 <= parsed.k <= MAX_K


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"candidates": json_values},
            optional={"k": json_values, "user_id": json_values, "history": json_values},
        ),
    )
)
def test_rank_parser_only_raises_client_errors(body: object) -> None:
    try:
        req = parse_rank_body(body)
    except (RequestValidationError, PayloadTooLargeError):
        return
    assert req.candidates and 1 <= req.k <= MAX_K


def test_rank_accepts_the_id_types_events_accept() -> None:
    req = parse_rank_body({"candidates": [1, " 2 ", "i3"], "user_id": 7, "history": [10]})
    assert req.candidates == ("1", "2", "i3") and req.user_id == "7" and req.history == ("10",)
