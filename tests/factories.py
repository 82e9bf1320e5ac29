"""Tiny seeded data whose right answers are known, for unit tests.

``make_catalog`` / ``make_events`` build polars frames in the store's column layout;
``load_into_store`` writes them straight into the tables (bypassing ingest validation, which
has tests of its own), so every package's unit tests can start from a populated store.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")
T0 = datetime(2020, 1, 1)


def make_catalog(n_items: int = 30, seed: int = 0) -> pl.DataFrame:
    """Items ``i0..i{n-1}``: item k has genre GENRES[k % 6] and text mentioning it."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_items):
        genre = GENRES[k % len(GENRES)]
        rows.append(
            {
                "item_id": f"i{k}",
                "title": f"{genre} Story {k}",
                "year": 1990 + int(rng.integers(0, 30)),
                "description": f"A {genre.lower()} film about thing {k}." if k % 5 else None,
                "tagline": None,
                "keywords": [genre.lower(), f"kw{k % 4}"],
                "genres": [genre],
                "category": genre,
                "director": None,
                "actors": None,
                "tags": [],
                "url": None,
                "created_at": T0,
                "source": "factory",
                "updated_at": T0,
            }
        )
    return pl.DataFrame(rows, schema_overrides={"year": pl.Int32})


def make_events(
    n_users: int = 12, n_items: int = 30, events_per_user: int = 15, seed: int = 0
) -> pl.DataFrame:
    """Rate events: user u prefers genre GENRES[u % 6] (rates it 4-5, others 1-3), one per hour."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        liked = u % len(GENRES)
        items = rng.choice(n_items, size=min(events_per_user, n_items), replace=False)
        for j, k in enumerate(items):
            ts = T0 + timedelta(days=u, hours=j)
            good = int(k) % len(GENRES) == liked
            rating = float(rng.choice([4.0, 4.5, 5.0]) if good else rng.choice([1.0, 2.0, 3.0]))
            rows.append(
                {
                    "event_id": f"e{u}-{j}",
                    "user_id": f"u{u}",
                    "item_id": f"i{int(k)}",
                    "event_type": "rate",
                    "value": rating,
                    "text": None,
                    "ts": ts,
                    "request_id": None,
                    "position": None,
                    "source": "factory",
                    "batch_id": "factory",
                }
            )
    return pl.DataFrame(rows, schema_overrides={"position": pl.Int32})


def load_into_store(
    con: duckdb.DuckDBPyConnection, items: pl.DataFrame, events: pl.DataFrame
) -> None:
    """Write frames into ``items``, ``events`` and ``users`` as they are."""
    con.register("_items_df", items.to_arrow())
    con.execute("INSERT INTO items BY NAME SELECT * FROM _items_df")
    con.register("_events_df", events.to_arrow())
    con.execute("INSERT INTO events BY NAME SELECT * FROM _events_df")
    con.execute(
        "INSERT INTO users SELECT user_id, min(ts), 'factory' FROM _events_df GROUP BY user_id"
    )
    con.unregister("_items_df")
    con.unregister("_events_df")


def click_record(
    event_id: str, user: str = "u1", item: str = "i3", **extra: object
) -> dict[str, object]:
    """One ``click`` event as the HTTP API and ``ingest_event_records`` take it."""
    return {
        "event_id": event_id,
        "user_id": user,
        "item_id": item,
        "event_type": "click",
        "ts": "2021-01-01T00:00:00Z",
        **extra,
    }


def deleted_handles(*markers: str) -> list[str]:
    """Targets of this process's descriptors that point at deleted files whose path holds one
    of ``markers`` (snapshot files kept open after their replacement)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if any(m in target for m in markers) and target.endswith("(deleted)"):
            out.append(target)
    return out
