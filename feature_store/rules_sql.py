"""The product rules of ``recsys.core.rules`` as SQL expressions (the one place they are SQL)."""

from __future__ import annotations

from recsys.core.rules import ENGAGEMENT_GRADE, POSITIVE_EVENT_TYPES, POSITIVE_RATING, RATING_GRADES

_POSITIVE_TYPES = ", ".join(f"'{t}'" for t in POSITIVE_EVENT_TYPES)


def _col(alias: str, column: str) -> str:
    return f"{alias}.{column}" if alias else column


def positive_sql(alias: str = "") -> str:
    """A positive interaction over an events relation: a good rating or an engagement event."""
    etype, value = _col(alias, "event_type"), _col(alias, "value")
    return (
        f"(({etype} = 'rate' AND {value} >= {POSITIVE_RATING}) OR {etype} IN ({_POSITIVE_TYPES}))"
    )


def positive_rating_sql(column: str = "rating") -> str:
    """A positive rating over ``split_v1`` rows (which hold rate events only)."""
    return f"{column} >= {POSITIVE_RATING}"


def label_sql(alias: str = "") -> str:
    """The ranker's graded label of one event (``recsys.core.rules.RATING_GRADES``)."""
    etype, value = _col(alias, "event_type"), _col(alias, "value")
    grades = " ".join(
        f"WHEN {etype} = 'rate' AND {value} >= {threshold} THEN {grade}"
        for threshold, grade in RATING_GRADES
    )
    return f"CASE {grades} WHEN {etype} IN ({_POSITIVE_TYPES}) THEN {ENGAGEMENT_GRADE} ELSE 0 END"
