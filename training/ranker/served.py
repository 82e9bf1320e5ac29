"""Hard negatives for the ranker: the items a served list showed in the label window.

On an impression log the items shown but not clicked in a user's label-window lists are the
best negatives there are -- the product put them in front of the user and the user passed --
yet most of them are not among the blender's candidates, so the candidate groups alone never
see them.  ``add_served_rows`` gives each such user a second training group, marked ``served``:
every item shown to the user in the window, clicked or not, with the columns it has as a
candidate, or, when no generator proposed it, those of ``Blender.item_frame`` (dense generator
scores, no ranks).  Labels come from the label join like every other row, so a shown-not-clicked
item is a 0.  The candidate groups are unchanged.

Why a group of its own: in an impression log every click is on a shown item, so inside a
user's candidate group the shown items outside the candidates would be far likelier to be
positive than the candidates, and "no blend rank" would mean "shown, so probably clicked" --
a marker the ranker learns at once (measured: per-impression AUC 0.65 instead of 0.88) and that
never exists when it ranks candidates.  Inside a served group every row was shown, so the only
way to rank it is what per-impression evaluation and ``/v1/rank`` ask: which shown items get
clicked.

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


def candidate_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """The candidate groups' rows (without the served groups added for training)."""
    return frame.filter(~pl.col(SERVED)) if SERVED in frame.columns else frame


def group_columns(frame: pl.DataFrame) -> list[str]:
    """The columns that identify a training group: the user, and ``served`` when present."""
    return ["user_id", SERVED] if SERVED in frame.columns else ["user_id"]


def add_served_rows(
    con: duckdb.DuckDBPyConnection,
    blender: Any,
    cands: pl.DataFrame,
    users: pl.DataFrame,
    *,
    shown: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``cands`` (with ``as_of``; ``served`` false) plus, per user, a ``served`` group of the
    items shown in the label window (``shown``: ``served_items`` read already)."""
    if shown is None:
        shown = served_items(con, users)
    base = cands.with_columns(pl.lit(False).alias(SERVED))
    if shown.height == 0:
        return base
    inside = cands.join(shown, on=["user_id", "item_id"], how="semi")
    rest = (
        shown.join(inside.select("user_id", "item_id"), on=["user_id", "item_id"], how="anti")
        .group_by("user_id", maintain_order=True)
        .agg("item_id")
        .join(users, on="user_id")
    )
    parts = [inside]
    if rest.height:
        extra = blender.item_frame(
            rest["user_id"].to_list(), rest["item_id"].to_list(), as_of=rest["as_of"].to_list()
        ).join(users, on="user_id")
        parts.append(extra.select(cands.columns).cast(cands.schema))
    group = pl.concat(parts, how="vertical").with_columns(pl.lit(True).alias(SERVED))
    log.info(
        "served lists: %d shown items in the label window for %d users, %d of them outside "
        "the candidates",
        shown.height,
        shown["user_id"].n_unique(),
        shown.height - inside.height,
    )
    return pl.concat([base, group.select(base.columns)], how="vertical")
