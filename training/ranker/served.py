"""Hard negatives for the ranker: the items a served list showed in the label window.

On an impression log the items shown but not clicked in a user's label-window lists are the
best negatives there are -- the product put them in front of the user and the user passed --
yet most of them are not among the blender's candidates, so the candidate frame alone never
sees them.  ``add_served_rows`` adds every served item of the window that is not a candidate
(clicked ones too), scored by ``Blender.item_frame`` and marked ``served`` (not a model
feature).  Labels come from the label join like every other row, so a shown-not-clicked item is
a 0.

Why the clicked ones too: served rows carry no generator rank and no blend rank (nothing
proposed them).  Were only the negatives added, "no blend rank" would mean "label 0" and the
ranker would learn that one split instead of anything about the items; with every served item
added, it only says "from the served list", whose click rate is what it is.

The window is the stage's label part for each user: for ``user_time`` splits from the user's
``val_start`` to (not including) their ``test_start``; for ``global_time`` splits between the
global cuts of ``split_v1_spec``.  Impressions of the test period never enter.
"""

from __future__ import annotations

import logging
from typing import Any

import duckdb
import polars as pl

from recsys.core.rules import EXPOSURE_EVENT_TYPE

log = logging.getLogger(__name__)

SERVED = "served"  # bookkeeping column: the item was in a served list of the label window


def served_items(con: duckdb.DuckDBPyConnection, users: pl.DataFrame) -> pl.DataFrame:
    """(user_id, item_id) shown to ``users`` in served lists of the fit stage's label window.

    ``users`` holds the stage's (user_id, as_of) cutoffs; only the fit stage (label part
    ``val``) has a label window that may be read for training.
    """
    row = con.execute("SELECT kind, val_start, test_start FROM split_v1_spec").fetchone()
    if row is None or users.height == 0:
        return pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8})
    kind, val_cut, test_cut = row
    if kind == "global_time":
        window = "i.ts >= ? AND i.ts < ?"
        params: list[Any] = [val_cut, test_cut]
    else:
        window = "i.ts >= u.val_start AND (u.test_start IS NULL OR i.ts < u.test_start)"
        params = []
    con.register("_served_users", users.select("user_id").to_arrow())
    try:
        return con.execute(
            f"""
            SELECT DISTINCT i.user_id, i.item_id
            FROM events i
            JOIN _served_users s ON s.user_id = i.user_id
            JOIN split_v1_users u ON u.user_id = i.user_id
            WHERE i.event_type = '{EXPOSURE_EVENT_TYPE}' AND i.request_id IS NOT NULL
              AND u.val_start IS NOT NULL AND {window}
            ORDER BY 1, 2
            """,
            params,
        ).pl()
    finally:
        con.unregister("_served_users")


def add_served_rows(
    con: duckdb.DuckDBPyConnection, blender: Any, cands: pl.DataFrame, users: pl.DataFrame
) -> pl.DataFrame:
    """``cands`` (with ``as_of``) plus the served items that are not candidates; ``served``
    marks every row whose item was served to the user in the label window."""
    shown = served_items(con, users)
    marked = cands.join(
        shown.with_columns(pl.lit(True).alias(SERVED)), on=["user_id", "item_id"], how="left"
    ).with_columns(pl.col(SERVED).fill_null(False))
    extra = shown.join(cands.select("user_id", "item_id"), on=["user_id", "item_id"], how="anti")
    if extra.height == 0:
        return marked
    per_user = (
        extra.group_by("user_id", maintain_order=True).agg("item_id").join(users, on="user_id")
    )
    rows = blender.item_frame(
        per_user["user_id"].to_list(),
        per_user["item_id"].to_list(),
        as_of=per_user["as_of"].to_list(),
    ).join(users, on="user_id")
    log.info(
        "served lists: %d shown items in the label window, %d of them added beside the candidates",
        shown.height,
        rows.height,
    )
    rows = rows.with_columns(pl.lit(True).alias(SERVED)).select(marked.columns)
    return pl.concat([marked, rows.cast(dict(marked.schema))], how="vertical")
