"""The first implementation of the features (polars frames and as-of joins), kept as an oracle.

It is the version the exact-value tests in test_features.py were written against (commit
af05c1e).  The numpy timelines that replaced it for speed must give the same values on any
data: test_features_equivalence.py checks that on random stores.  Not used by the package.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import duckdb
import polars as pl

from feature_store.features import FEATURE_COLUMNS, resolve_event_relation, validate_requests
from feature_store.rules_sql import positive_sql


def reference_features(
    con: duckdb.DuckDBPyConnection,
    requests: pl.DataFrame,
    *,
    events: str = "events",
    covisit_window_days: float = 1.0,
) -> pl.DataFrame:
    """``compute_features`` as first written: same arguments, same output shape."""
    req = validate_requests(requests)
    relation = resolve_event_relation(con, events)
    if req.height == 0:
        empty = pl.DataFrame(schema={c: pl.Float64 for c in FEATURE_COLUMNS})
        return pl.concat([req, empty], how="horizontal")
    out = _compute(con, req.with_row_index("rid"), relation, covisit_window_days)
    return pl.concat([req, out], how="horizontal")


def _compute(
    con: duckdb.DuckDBPyConnection, req: pl.DataFrame, relation: str, window_days: float
) -> pl.DataFrame:
    """Read the requested entities' events (DuckDB), then build every feature (polars)."""
    name = f"_fs_req_{uuid.uuid4().hex}"
    con.register(name, req.select("user_id", "item_id").to_arrow())
    try:
        item_events = con.execute(item_events_sql(relation, name)).pl()
        seq = user_sequence(con.execute(user_events_sql(relation, name)).pl())
        items = pl.concat([seq.select("item_id"), req.select("item_id")]).unique()
        con.register(f"{name}_items", items.to_arrow())
        keys = item_keys(con.execute(item_keys_sql(f"{name}_items")).pl())
        users = user_features(req, seq)
        recent = recent_items(users, seq)
        sequences = seq.select("user_id", "item_id", "event_id", "ts").clear()
        if recent.height:  # users without history before as_of need no co-visitation read
            wanted = recent.select(item_id="recent_item").unique()
            con.register(f"{name}_recent", wanted.to_arrow())
            sequences = con.execute(sequences_sql(relation, f"{name}_recent")).pl()
    finally:
        for suffix in ("", "_items", "_recent"):
            con.unregister(name + suffix)
    parts = [
        item_features(req, item_events),
        users.drop("user_id", "item_id", "as_of", "c_n", "c_pos"),
        user_item_features(req, seq),
        affinity_features(users, seq, keys),
        covisit_features(recent, sequences, window_days),
    ]
    out = req.select("rid")
    for part in parts:
        out = out.join(part, on="rid", how="left")
    out = out.sort("rid").with_columns(pl.col("covisit_strength", "covisit_max").fill_null(0))
    return out.select(pl.col(FEATURE_COLUMNS).cast(pl.Float64))


# Positive engagement (recsys.core.rules).
POSITIVE_SQL = positive_sql("e")
_FLAGS = f"""{POSITIVE_SQL} AS is_pos,
           e.event_type = 'impression' AS is_impr,
           e.event_type = 'click' AS is_click,
           CASE WHEN e.event_type = 'rate' THEN e.value END AS rating"""


def item_events_sql(events: str, requests: str) -> str:
    """Every event (impressions included) of the requested items."""
    return f"""
    SELECT e.item_id, e.ts, {_FLAGS}
    FROM {events} e
    WHERE e.item_id IN (SELECT DISTINCT item_id FROM {requests})"""


def user_events_sql(events: str, requests: str) -> str:
    """The requested users' interactions (impressions excluded)."""
    return f"""
    SELECT e.user_id, e.item_id, e.event_id, e.ts, {_FLAGS}
    FROM {events} e
    WHERE e.user_id IN (SELECT DISTINCT user_id FROM {requests})
      AND e.event_type <> 'impression'"""


def item_keys_sql(items: str) -> str:
    """Genres and category of the items listed in relation ``items``."""
    return f"""
    SELECT i.item_id, i.genres, i.category FROM items i
    WHERE i.item_id IN (SELECT item_id FROM {items})"""


def sequences_sql(events: str, recent_items: str) -> str:
    """Interactions of every user who touched one of ``recent_items`` (their full sequences)."""
    return f"""
    SELECT e.user_id, e.item_id, e.event_id, e.ts
    FROM {events} e
    WHERE e.event_type <> 'impression'
      AND e.user_id IN (
          SELECT DISTINCT x.user_id FROM {events} x
          WHERE x.item_id IN (SELECT item_id FROM {recent_items})
      )"""


ITEM_WINDOWS_DAYS: tuple[int, ...] = (7, 30, 365)
USER_WINDOW_DAYS = 30
RECENT_ITEMS = 5
_DAY_US = 86_400_000_000


def series(frame: pl.DataFrame, keys: Sequence[str], sums: dict[str, pl.Expr]) -> pl.DataFrame:
    """One row per (keys, ts), running totals of ``sums`` per ``keys``, sorted by ts."""
    # Sorting by time alone suffices: a window keeps the frame's order inside each group.
    grouped = frame.group_by([*keys, "ts"]).agg(**sums).sort("ts")
    return grouped.with_columns(pl.col(list(sums)).cum_sum().over(list(keys)))


def asof(
    probes: pl.DataFrame, table: pl.DataFrame, keys: Sequence[str], at: str = "as_of"
) -> pl.DataFrame:
    """Each probe row with the last ``table`` row of its keys strictly before ``probes[at]``."""
    return probes.sort(at).join_asof(
        table.rename({"ts": "_ts"}),
        left_on=at,
        right_on="_ts",
        by=list(keys),
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,  # both sides are sorted by time just above
    )


def days_between(later: str, earlier: str) -> pl.Expr:
    return (pl.col(later) - pl.col(earlier)).dt.total_microseconds() / _DAY_US


def ratio(num: str, den: str) -> pl.Expr:
    return pl.when(pl.col(den) > 0).then(pl.col(num) / pl.col(den))


def item_features(req: pl.DataFrame, item_events: pl.DataFrame) -> pl.DataFrame:
    """rid -> item counts over windows, rates, CTR, age and recency."""
    inter = item_events.filter(~pl.col("is_impr"))
    s = series(
        inter,
        ["item_id"],
        {
            "c_n": pl.len(),
            "c_pos": pl.col("is_pos").sum(),
            "c_rate": pl.col("rating").count(),
            "s_rate": pl.col("rating").sum(),
            "c_click": pl.col("is_click").sum(),
        },
    ).with_columns(last_ts=pl.col("ts"))
    impr = series(item_events.filter(pl.col("is_impr")), ["item_id"], {"c_impr": pl.len()})
    # The first interaction ever is before as_of exactly when any interaction is.
    first = inter.group_by("item_id").agg(first_ts=pl.col("ts").min())
    base = req.select("rid", "item_id", "as_of")
    now = asof(base, s, ["item_id"]).drop("_ts")
    now = asof(now, impr, ["item_id"]).drop("_ts").join(first, on="item_id", how="left")
    counts = s.select("item_id", "ts", "c_n")
    for d in ITEM_WINDOWS_DAYS:  # cum(as_of - d): one as-of lookup per window
        probe = now.with_columns(_t=pl.col("as_of") - pl.duration(days=d))
        now = asof(probe, counts.rename({"c_n": f"c_{d}"}), ["item_id"], at="_t")
        now = now.drop("_t", "_ts")
    now = now.with_columns(
        pl.col("c_n", "c_click", *[f"c_{d}" for d in ITEM_WINDOWS_DAYS]).fill_null(0)
    )
    e7, e30, e365 = (pl.col("c_n") - pl.col(f"c_{d}") for d in ITEM_WINDOWS_DAYS)
    return now.select(
        "rid",
        item_events_7d=e7,
        item_events_30d=e30,
        item_events_365d=e365,
        item_events_all=pl.col("c_n"),
        item_trend_7d_30d=((1 + e7) / (1 + e30 * 7 / 30)).log(),
        item_trend_30d_365d=((1 + e30) / (1 + e365 * 30 / 365)).log(),
        item_positives_all=pl.col("c_pos").fill_null(0),
        item_positive_rate=ratio("c_pos", "c_n"),
        item_rating_count=pl.col("c_rate").fill_null(0),
        item_mean_rating=ratio("s_rate", "c_rate"),
        item_ctr=ratio("c_click", "c_impr"),
        item_age_days=pl.when(pl.col("first_ts") < pl.col("as_of")).then(
            days_between("as_of", "first_ts")
        ),
        item_days_since_last=days_between("as_of", "last_ts"),
    )


def item_keys(items: pl.DataFrame) -> pl.DataFrame:
    """(item_id, kind, key) from (item_id, genres, category): kind 1 a genre, 2 the category."""
    genres = items.select("item_id", kind=pl.lit(1), key="genres").explode("key")
    category = items.select("item_id", kind=pl.lit(2), key="category")
    return pl.concat([genres, category]).drop_nulls("key").unique()


def user_sequence(user_events: pl.DataFrame) -> pl.DataFrame:
    """The requested users' interactions with ``rn``: 1-based rank by (ts, event_id)."""
    return user_events.sort("ts", "event_id").with_columns(
        rn=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("user_id")
    )


def user_features(req: pl.DataFrame, seq: pl.DataFrame) -> pl.DataFrame:
    """rid -> user activity, ratings, recency, and ``c_n`` (interactions before as_of)."""
    s = series(
        seq,
        ["user_id"],
        {
            "c_n": pl.len().cast(pl.Int64),
            "c_pos": pl.col("is_pos").sum(),
            "c_rate": pl.col("rating").count(),
            "s_rate": pl.col("rating").sum(),
        },
    )
    base = req.select("rid", "user_id", "item_id", "as_of")
    now = asof(base, s, ["user_id"]).rename({"_ts": "last_ts"})
    past = asof(
        base.with_columns(t=pl.col("as_of") - pl.duration(days=USER_WINDOW_DAYS)),
        s.select("user_id", "ts", c_old="c_n"),
        ["user_id"],
        at="t",
    )
    now = now.join(past.select("rid", "c_old"), on="rid").with_columns(
        pl.col("c_n", "c_pos", "c_rate", "c_old").fill_null(0)
    )
    return now.select(
        "rid",
        "user_id",
        "item_id",
        "as_of",
        "c_n",
        "c_pos",
        user_events_30d=pl.col("c_n") - pl.col("c_old"),
        user_events_all=pl.col("c_n"),
        user_positives_all=pl.col("c_pos"),
        user_positive_rate=ratio("c_pos", "c_n"),
        user_rating_count=pl.col("c_rate"),
        user_mean_rating=ratio("s_rate", "c_rate"),
        user_days_since_last=days_between("as_of", "last_ts"),
    )


def user_item_features(req: pl.DataFrame, seq: pl.DataFrame) -> pl.DataFrame:
    """rid -> how often the user interacted with this item before as_of."""
    pairs = seq.join(req.select("user_id", "item_id").unique(), on=["user_id", "item_id"])
    s = series(pairs, ["user_id", "item_id"], {"c_ui": pl.len()})
    hit = asof(req.select("rid", "user_id", "item_id", "as_of"), s, ["user_id", "item_id"])
    return hit.select("rid", user_item_events=pl.col("c_ui").fill_null(0))


def affinity_features(users: pl.DataFrame, seq: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """rid -> share of the user's positives on the candidate's genres / category."""
    pos = seq.filter(pl.col("is_pos")).join(keys, on="item_id")
    s = series(pos, ["user_id", "kind", "key"], {"c_key": pl.len()})
    probes = users.select("rid", "user_id", "item_id", "as_of").join(keys, on="item_id")
    hit = asof(probes, s, ["user_id", "kind", "key"]).with_columns(pl.col("c_key").fill_null(0))
    agg = hit.group_by("rid").agg(
        genre_mean=pl.col("c_key").filter(pl.col("kind") == 1).mean(),
        genre_max=pl.col("c_key").filter(pl.col("kind") == 1).max(),
        category_n=pl.col("c_key").filter(pl.col("kind") == 2).max(),
    )
    out = users.select("rid", "c_pos").join(agg, on="rid", how="left")
    return out.select(
        "rid",
        user_genre_affinity=ratio("genre_mean", "c_pos"),
        user_genre_affinity_max=ratio("genre_max", "c_pos"),
        user_category_affinity=ratio("category_n", "c_pos"),
    )


def recent_items(users: pl.DataFrame, seq: pl.DataFrame) -> pl.DataFrame:
    """(rid, cand, as_of, recent_item): the user's last RECENT_ITEMS interactions before as_of."""
    ranks = (
        users.select("rid", "user_id", cand="item_id", as_of="as_of", top="c_n")
        .with_columns(rn=pl.int_ranges(pl.col("top") - RECENT_ITEMS + 1, pl.col("top") + 1))
        .explode("rn")
        .filter(pl.col("rn") >= 1)
    )
    return ranks.join(seq.select("user_id", "rn", recent_item="item_id"), on=["user_id", "rn"])


def covisit_features(
    recent: pl.DataFrame, sequences: pl.DataFrame, window_days: float
) -> pl.DataFrame:
    """rid -> sum and max of co-visitation counts between recent items and the candidate."""
    seq = sequences.sort("ts", "event_id").with_columns(
        prev_item=pl.col("item_id").shift(1).over("user_id"),
        prev_ts=pl.col("ts").shift(1).over("user_id"),
    )
    near = seq.filter(
        (pl.col("prev_item") != pl.col("item_id"))
        & (
            (pl.col("ts") - pl.col("prev_ts")).dt.total_microseconds()
            <= int(round(window_days * _DAY_US))
        )
    )
    pairs = (
        pl.concat(
            [
                near.select("ts", a="prev_item", b="item_id"),
                near.select("ts", a="item_id", b="prev_item"),
            ]
        )
        .join(recent.select(a="recent_item").unique(), on="a", how="semi")
        .join(recent.select(b="cand").unique(), on="b", how="semi")
    )
    s = series(pairs, ["a", "b"], {"c_pair": pl.len()})
    probes = recent.select("rid", "as_of", a="recent_item", b="cand")
    hit = asof(probes, s, ["a", "b"]).with_columns(pl.col("c_pair").fill_null(0))
    return hit.group_by("rid").agg(
        covisit_strength=pl.col("c_pair").sum(), covisit_max=pl.col("c_pair").max()
    )
