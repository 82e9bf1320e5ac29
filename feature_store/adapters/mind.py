"""MIND-style impression logs (news.tsv + behaviors.tsv) -> items and impression/click events.

Both files are tab-separated without a header (the Microsoft News Dataset layout):

- news.tsv: news id, category, subcategory, title, abstract, url, title entities, abstract
  entities -> items (category, tags = [subcategory], description = abstract; news have no
  genres: the text reads "Category: ...", the genre generator and features use the category);
- behaviors.tsv: impression id, user id, time (``11/15/2019 8:55:22 AM``), click history
  (space-separated news ids), impressions (``N1-1 N2-0``: news id and clicked label) ->
  one ``impression`` event per listed news (request_id = impression id, position = 0-based
  index in the list, id ``mind:imp:{impression}:{position}``) plus a ``click`` event with the
  same request id, position and time for each label 1 (id ``mind:click:{impression}:{position}``).
  Test-split lines without labels (``N1``) give impressions only.

The click *history* has no times of its own.  Each history item is ingested as a ``click``
event one second before the earliest impression whose history lists it (id
``mind:hist:{user}:{news}``, no request id), and not at all when the user clicked it in an earlier
logged impression (that click is the event).  In MIND proper a user's history is the same on
every line, so it all lands before the user's first impression; in a log whose histories grow
(later lines list the clicks of earlier impressions), an item is never known before the line
that first lists it, so no label of a later impression leaks into an earlier point in time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb

from feature_store.db import transaction
from feature_store.ingest import IngestResult, open_batch, write_events, write_items
from feature_store.sources import check_file, drop_stage, stage_query
from recsys.core.errors import DataValidationError

log = logging.getLogger(__name__)

NEWS_COLUMNS = (
    "news_id",
    "category",
    "subcategory",
    "title",
    "abstract",
    "url",
    "title_entities",
    "abstract_entities",
)
BEHAVIOR_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


@dataclass(frozen=True)
class MindSummary:
    """What one MIND ingest read and wrote."""

    news: int  # items written
    impressions: int  # behaviors lines read
    impression_events: int  # written by this run
    click_events: int  # label-1 clicks written by this run
    history_events: int
    quarantined: int
    results: tuple[IngestResult, ...]


def ingest_mind(
    con: duckdb.DuckDBPyConnection, directory: Path, *, progress: bool = True
) -> MindSummary:
    """Ingest ``directory``/news.tsv and behaviors.tsv (all-or-nothing; re-running adds nothing)."""
    directory = Path(directory)
    news, behaviors = directory / "news.tsv", directory / "behaviors.tsv"
    for path in (news, behaviors):
        if not path.is_file():
            raise DataValidationError(
                "MIND file not found; the directory needs news.tsv and behaviors.tsv "
                "(e.g. from MINDsmall_train.zip)",
                path=str(path),
            )
        check_file(path, "tsv")
    with transaction(con):
        items = _ingest_news(con, news, progress)
        events, counts = _ingest_behaviors(con, behaviors, progress)
    summary = MindSummary(
        news=items.rows_written,
        impressions=counts["lines"],
        impression_events=counts["impression"],
        click_events=counts["click"],
        history_events=counts["history"],
        quarantined=items.rows_quarantined + events.rows_quarantined,
        results=(items, events),
    )
    log.info("mind: %s", {k: v for k, v in summary.__dict__.items() if k != "results"})
    return summary


def _tsv(path: Path, columns: tuple[str, ...]) -> str:
    cols = ", ".join(f"'{c}': 'VARCHAR'" for c in columns)
    literal = "'" + str(path).replace("'", "''") + "'"
    # MIND titles contain bare quotes: no quoting at all, tabs never occur inside fields.
    return (
        f"read_csv({literal}, delim='\\t', header=false, quote='', escape='', "
        f"columns={{{cols}}}, null_padding=false)"
    )


def _ingest_news(con: duckdb.DuckDBPyConnection, path: Path, progress: bool) -> IngestResult:
    with open_batch(
        con, "mind-news", str(path), steps=3, progress=progress, own_transaction=False
    ) as batch:
        table = batch.tmp("news")
        rows = stage_query(
            con,
            f"""SELECT news_id AS item_id, title, NULL::VARCHAR AS year,
            abstract AS description, NULL::VARCHAR AS tagline, NULL::VARCHAR[] AS keywords,
            NULL::VARCHAR[] AS genres, nullif(trim(category), '') AS category,
            NULL::VARCHAR AS director, NULL::VARCHAR AS actors,
            list_filter([trim(subcategory)], g -> g IS NOT NULL AND g <> '') AS tags, url,
            NULL::VARCHAR AS created_at
            FROM {_tsv(path, NEWS_COLUMNS)}""",
            table,
            path=path,
        )
        batch.step(f"read {rows} news")
        result = write_items(batch, table, rows_read=rows, path=str(path))
        batch.record(result)
        drop_stage(con, table)
    return result


def _events_sql(lines: str) -> str:
    """Impression, click and history events from the staged behaviors lines (text columns)."""
    ts = f"coalesce(strftime(try_strptime(trim(time), '{TIME_FORMAT}'), '%Y-%m-%dT%H:%M:%S'), time)"
    return f"""
    WITH tokens AS (
        SELECT _row AS line, trim(impression_id) AS request_id, user_id, {ts} AS ts,
               try_strptime(trim(time), '{TIME_FORMAT}') AS at,
               unnest(string_split(trim(impressions), ' ')) AS token,
               unnest(range(len(string_split(trim(impressions), ' ')))) AS pos
        FROM {lines} WHERE nullif(trim(impressions), '') IS NOT NULL),
    parsed AS (
        SELECT *, split_part(token, '-', 1) AS item_id,
               CASE WHEN token LIKE '%-%' THEN split_part(token, '-', 2) END AS label
        FROM tokens),
    history AS (
        -- each history item once, at the earliest line that lists it
        SELECT DISTINCT ON (b.user_id, h.item_id) b._row AS line, b.user_id, h.item_id,
               try_strptime(trim(b.time), '{TIME_FORMAT}') AS seen
        FROM {lines} b, unnest(string_split(trim(coalesce(b.history, '')), ' ')) AS h(item_id)
        WHERE h.item_id <> ''
        ORDER BY b.user_id, h.item_id, seen NULLS LAST, b._row)
    SELECT line, 'mind:imp:' || request_id || ':' || pos AS event_id, user_id, item_id,
           'impression' AS event_type, ts, NULL::VARCHAR AS value, NULL::VARCHAR AS text,
           request_id,
           CAST(pos AS VARCHAR) AS position
    FROM parsed
    UNION ALL
    SELECT line, 'mind:click:' || request_id || ':' || pos, user_id, item_id, 'click', ts,
           NULL, NULL, request_id, CAST(pos AS VARCHAR)
    FROM parsed WHERE label = '1'
    UNION ALL
    SELECT h.line, 'mind:hist:' || h.user_id || ':' || h.item_id, h.user_id, h.item_id, 'click',
           coalesce(strftime(h.seen - INTERVAL 1 SECOND, '%Y-%m-%dT%H:%M:%S'), 'unknown'),
           NULL, NULL, NULL, NULL
    FROM history h
    -- a history item the user clicked in an earlier logged impression is that click already
    WHERE NOT EXISTS (SELECT 1 FROM parsed p WHERE p.label = '1' AND p.user_id = h.user_id
                      AND p.item_id = h.item_id AND p.at < h.seen)"""


def _ingest_behaviors(
    con: duckdb.DuckDBPyConnection, path: Path, progress: bool
) -> tuple[IngestResult, dict[str, int]]:
    with open_batch(
        con, "mind-behaviors", str(path), steps=4, progress=progress, own_transaction=False
    ) as batch:
        lines = batch.tmp("lines")
        n_lines = stage_query(
            con, f"SELECT * FROM {_tsv(path, BEHAVIOR_COLUMNS)}", lines, path=path
        )
        events = f"SELECT * FROM ({_events_sql(lines)}) ORDER BY line, event_type DESC, position"
        result = write_events(batch, events, path=str(path), source_row="line")
        batch.record(result)
        counts = dict(
            con.execute(
                """SELECT CASE WHEN event_id LIKE 'mind:hist:%' THEN 'history' ELSE event_type END,
                      count(*) FROM events WHERE batch_id = ? GROUP BY ALL""",
                [batch.batch_id],
            ).fetchall()
        )
        drop_stage(con, lines)
    return result, {
        "lines": n_lines,
        "impression": int(counts.get("impression", 0)),
        "click": int(counts.get("click", 0)),
        "history": int(counts.get("history", 0)),
    }
