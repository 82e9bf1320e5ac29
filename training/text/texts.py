"""The texts the two towers read: item text and user-interest text, built from the store.

Item text: title (year), genres (or, for items without genres such as news or products, the
category), description (overview/plot/abstract), tagline, keywords, tags, director — in that
order, so truncation to the token budget drops the least informative parts first.  Items with
missing fields fall back to what exists (the title at least); any catalog composes from the
fields it has, and MovieLens texts are unchanged.

User text: the user's own tags/comments (most recent first), then their positively engaged items
newest first, each as a short summary (title, genres, the first words of the overview).  The
tokenizer truncates it to ``max_user_tokens``, so older items fall off the end.

Pure string composition (``compose_*``) is separate from the SQL that feeds it so training pairs
can rebuild a user's text as of any point in time without another query.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import pyarrow as pa

from feature_store.rules_sql import positive_sql
from recsys.core.rules import HISTORY_LENGTH

log = logging.getLogger(__name__)

# Events that say "the user liked this item" (the same definition as the rest of the system).
POSITIVE_SQL = positive_sql()
NOTE_SQL = "(event_type IN ('tag', 'comment') AND text IS NOT NULL AND trim(text) <> '')"
OVERVIEW_WORDS_IN_HISTORY = 16  # words of overview per history item: a hint, not the plot
HISTORY_ITEMS_WITH_OVERVIEW = 3  # only the newest items carry an overview excerpt
MAX_NOTES = 10

_ITEM_COLUMNS = (
    "item_id, title, year, description, tagline, keywords, genres, category, tags, director"
)


def _join(values: Iterable[object] | None, limit: int | None = None) -> str:
    if not values:
        return ""
    out = [str(v).strip() for v in values if v is not None and str(v).strip()]
    return ", ".join(out[:limit] if limit else out)


def _title(title: object, year: object) -> str:
    name = str(title or "").strip() or "untitled"
    return f"{name} ({year})" if year else name


def compose_item_text(row: Mapping[str, object]) -> str:
    """The full item text from one ``items`` row (missing fields are skipped)."""
    parts = [_title(row.get("title"), row.get("year"))]
    genres = _join(row.get("genres"))  # type: ignore[arg-type]
    category = str(row.get("category") or "").strip()
    if genres:
        parts.append(f"Genres: {genres}.")
    elif category:  # news, products: a category instead of genres
        parts.append(f"Category: {category}.")
    for key in ("description", "tagline"):
        value = str(row.get(key) or "").strip()
        if value and value.upper() != "N/A":
            parts.append(value)
    keywords = _join(row.get("keywords"), 12)  # type: ignore[arg-type]
    if keywords:
        parts.append(f"Keywords: {keywords}.")
    tags = _join(row.get("tags"), 12)  # type: ignore[arg-type]
    if tags:
        parts.append(f"Tags: {tags}.")
    director = str(row.get("director") or "").strip()
    if director and director.upper() != "N/A":
        parts.append(f"Director: {director}.")
    return " ".join(parts)


def compose_item_summary(row: Mapping[str, object], with_overview: bool) -> str:
    """A short item mention for user histories: title, genres and optionally overview words."""
    text = _title(row.get("title"), row.get("year"))
    genres = _join(row.get("genres"), 3) or str(row.get("category") or "").strip()  # type: ignore[arg-type]
    if genres:
        text += f" [{genres}]"
    if with_overview:
        words = str(row.get("description") or "").split()[:OVERVIEW_WORDS_IN_HISTORY]
        if words and " ".join(words).upper() != "N/A":
            text += ": " + " ".join(words)
    return text


@dataclass(frozen=True)
class ItemSummaries:
    """Short item mentions, with and without overview excerpt, for composing user texts."""

    short: dict[str, str]
    with_overview: dict[str, str]


def _item_rows(con: duckdb.DuckDBPyConnection, item_ids: Sequence[str] | None) -> list[dict]:
    sql = f"SELECT {_ITEM_COLUMNS} FROM items"
    if item_ids is not None:
        con.register("_text_ids", _ids_table(item_ids))
        sql += " WHERE item_id IN (SELECT id FROM _text_ids)"
    cur = con.execute(sql + " ORDER BY item_id")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    if item_ids is not None:
        con.unregister("_text_ids")
    return rows


def _ids_table(ids: Sequence[str]) -> object:

    return pa.table({"id": pa.array([str(i) for i in ids], type=pa.string())})


def item_texts(
    con: duckdb.DuckDBPyConnection, item_ids: Sequence[str] | None = None
) -> dict[str, str]:
    """``item_id -> item text`` for every item (or the given ids) in the store."""
    rows = _item_rows(con, item_ids)
    texts = {str(r["item_id"]): compose_item_text(r) for r in rows}
    log.debug("built %d item texts", len(texts))
    return texts


def item_summaries(con: duckdb.DuckDBPyConnection) -> ItemSummaries:
    """Short mentions of every item, used inside user texts."""
    rows = _item_rows(con, None)
    return ItemSummaries(
        short={str(r["item_id"]): compose_item_summary(r, False) for r in rows},
        with_overview={str(r["item_id"]): compose_item_summary(r, True) for r in rows},
    )


def compose_user_text(
    items_newest_first: Sequence[str],
    summaries: ItemSummaries,
    notes_newest_first: Sequence[str] = (),
    max_items: int = HISTORY_LENGTH,
) -> str:
    """The user-interest text from their liked items (newest first) and their own notes."""
    parts: list[str] = []
    notes = [n.strip() for n in notes_newest_first if n and n.strip()][:MAX_NOTES]
    if notes:
        parts.append("My tags: " + ", ".join(dict.fromkeys(notes)) + ".")
    liked: list[str] = []
    for k, item_id in enumerate(dict.fromkeys(items_newest_first)):
        if len(liked) >= max_items:
            break
        table = summaries.with_overview if k < HISTORY_ITEMS_WITH_OVERVIEW else summaries.short
        mention = table.get(item_id)
        if mention:
            liked.append(mention)
    if liked:
        parts.append("Liked: " + "; ".join(liked) + ".")
    return " ".join(parts)


@dataclass
class UserHistory:
    """One user's liked items and notes in time order (oldest first), for point-in-time texts."""

    liked: list[tuple[datetime, str]] = field(default_factory=list)
    notes: list[tuple[datetime, str]] = field(default_factory=list)

    def text_before(self, ts: datetime | None, summaries: ItemSummaries, max_items: int) -> str:
        """The user text from events strictly before ``ts`` (``None``: everything)."""
        liked = [i for t, i in self.liked if ts is None or t < ts]
        notes = [n for t, n in self.notes if ts is None or t < ts]
        return compose_user_text(liked[::-1], summaries, notes[::-1], max_items)


def user_histories(
    con: duckdb.DuckDBPyConnection,
    events_relation: str = "events",
    user_ids: Sequence[str] | None = None,
) -> dict[str, UserHistory]:
    """Liked items and notes per user from ``events_relation`` (a table or view name)."""
    where = ""
    if user_ids is not None:
        con.register("_hist_users", _ids_table(user_ids))
        where = "AND user_id IN (SELECT id FROM _hist_users)"
    rows = con.execute(
        f"""
        SELECT user_id, item_id, ts, CASE WHEN {NOTE_SQL} THEN text END AS note,
               {POSITIVE_SQL} AS liked
        FROM {events_relation}
        WHERE ({POSITIVE_SQL} OR {NOTE_SQL}) {where}
        ORDER BY user_id, ts, item_id
        """
    ).fetchall()
    if user_ids is not None:
        con.unregister("_hist_users")
    out: dict[str, UserHistory] = {}
    for user_id, item_id, ts, note, liked in rows:
        hist = out.setdefault(str(user_id), UserHistory())
        if liked:
            hist.liked.append((ts, str(item_id)))
        if note:
            hist.notes.append((ts, str(note)))
    return out


def user_texts(
    con: duckdb.DuckDBPyConnection,
    user_ids: Sequence[str] | None,
    events_relation: str = "events",
    max_items: int = HISTORY_LENGTH,
    summaries: ItemSummaries | None = None,
) -> dict[str, str]:
    """``user_id -> user text`` from ``events_relation``; users with nothing liked or noted are
    left out (callers fall back to popularity or ``TextIndex.vector_from_history``)."""
    summaries = summaries or item_summaries(con)
    hists = user_histories(con, events_relation, user_ids)
    texts = {u: h.text_before(None, summaries, max_items) for u, h in hists.items()}
    return {u: t for u, t in texts.items() if t}
