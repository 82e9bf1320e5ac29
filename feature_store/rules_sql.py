"""The task of ``recsys.core.rules`` as SQL (the one place it is SQL).

The task is installed in the store as three macros (``feature_store.task.apply_task``), so every
query says ``recsys_positive(event_type, value)`` and the store's task decides; the macros are
part of the database file, so read-only copies (serving snapshots) answer with the same task.
"""

from __future__ import annotations

from recsys.core.rules import Task

POSITIVE_MACRO = "recsys_positive"
LABEL_MACRO = "recsys_label"
NEGATIVE_MACRO = "recsys_low_rating"
MACROS: tuple[str, ...] = (POSITIVE_MACRO, LABEL_MACRO, NEGATIVE_MACRO)


def _col(alias: str, column: str) -> str:
    return f"{alias}.{column}" if alias else column


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in(types: tuple[str, ...]) -> str:
    return f"t IN ({', '.join(_quote(x) for x in types)})" if types else "false"


def macro_statements(task: Task) -> list[str]:
    """``CREATE OR REPLACE MACRO`` statements that install ``task`` in a store."""
    rating = "false" if task.positive_rating is None else f"v >= {float(task.positive_rating)!r}"
    low = "false" if task.negative_rating is None else f"v <= {float(task.negative_rating)!r}"
    whens = " ".join(
        f"WHEN t = {_quote(g.event_type)}"
        + ("" if g.min_value is None else f" AND v >= {float(g.min_value)!r}")
        + f" THEN {int(g.grade)}"
        for g in task.grades
    )
    label = f"CASE {whens} ELSE 0 END" if whens else "0"
    return [
        f"CREATE OR REPLACE MACRO {POSITIVE_MACRO}(t, v) AS "
        f"(coalesce((t = 'rate' AND {rating}) OR {_in(task.positive_event_types)}, false))",
        f"CREATE OR REPLACE MACRO {LABEL_MACRO}(t, v) AS ({label})",
        f"CREATE OR REPLACE MACRO {NEGATIVE_MACRO}(t, v) AS "
        f"(coalesce(t = 'rate' AND {low}, false))",
    ]


def positive_sql(alias: str = "", value: str = "value") -> str:
    """A positive interaction of the store's task over an events relation (or ``split_v1``
    rows with ``value="value"``)."""
    return f"{POSITIVE_MACRO}({_col(alias, 'event_type')}, {_col(alias, value)})"


def low_rating_sql(alias: str = "") -> str:
    """An explicit negative rating of the store's task."""
    return f"{NEGATIVE_MACRO}({_col(alias, 'event_type')}, {_col(alias, 'value')})"


def label_sql(alias: str = "") -> str:
    """The ranker's graded label of one event under the store's task."""
    return f"{LABEL_MACRO}({_col(alias, 'event_type')}, {_col(alias, 'value')})"
