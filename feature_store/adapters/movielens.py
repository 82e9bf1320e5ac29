"""MovieLens ml-latest-small (+ TMDB 5000 and MeLU item text) -> items and rate/tag events.

Mapping (docs/ingest.md): ratings -> ``rate`` events (value = rating, id
``ml:rate:{userId}:{movieId}:{timestamp}``); tags -> ``tag`` events with their text (id
``ml:tag:{userId}:{movieId}:{timestamp}:{md5(tag)[:12]}``); movies -> items with the title
without its "(year)", the year, genres, TMDB overview/tagline/keywords (joined through
links.csv tmdbId), OMDb plot/director/actors from movies_extrainfos.dat (joined on movieId;
the plot is the description where TMDB has no overview) and every user tag of the movie.
All three batches commit together or not at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from feature_store.db import transaction
from feature_store.ingest import IngestResult, open_batch, write_events, write_items
from feature_store.sources import check_file, drop_stage, reader_sql, stage_query, staged_columns
from recsys.core.errors import DataValidationError

log = logging.getLogger(__name__)

SOURCE = "movielens"
FILES = {
    "ratings": "movielens-small/ratings.csv",
    "tags": "movielens-small/tags.csv",
    "movies": "movielens-small/movies.csv",
    "links": "movielens-small/links.csv",
    "tmdb": "movie-text/tmdb_5000_movies.csv",
    "extrainfos": "movie-text/movies_extrainfos.dat",
}
REQUIRED = {
    "ratings": ("userId", "movieId", "rating", "timestamp"),
    "tags": ("userId", "movieId", "tag", "timestamp"),
    "movies": ("movieId", "title", "genres"),
    "links": ("movieId", "tmdbId"),
    "tmdb": ("id", "overview", "tagline", "keywords"),
}
FETCH_HELP = """\
Put the public files under @DIR@ like this:
  @DIR@/movielens-small/{ratings,tags,movies,links}.csv
      from the GroupLens "ml-latest-small" zip
      (https://files.grouplens.org/datasets/movielens/ml-latest-small.zip; unzip and rename the
      folder ml-latest-small -> movielens-small)
  @DIR@/movie-text/tmdb_5000_movies.csv
      from the Kaggle "TMDB 5000 Movie Dataset" (tmdb-movie-metadata)
  @DIR@/movie-text/movies_extrainfos.dat
      from the MeLU paper's repository (hoyeoplee/MeLU, movielens/movies_extrainfos.dat)
and pass --data-dir @DIR@ (or set RECSYS_DATA_DIR)."""
# movieId::title::year::rated::released::genre::director::writer::actors::plot::poster
_EXTRA_FIELDS = 11


@dataclass(frozen=True)
class MovieLensSummary:
    """What one MovieLens ingest read and wrote."""

    ratings: int  # rate events in the store from MovieLens after the run
    tags: int
    movies: int
    items_with_text: int  # items with an overview or a plot
    items_with_tags: int
    quarantined: int  # rows quarantined by this run
    results: tuple[IngestResult, ...]


def missing_files(data_dir: Path) -> list[Path]:
    """The MovieLens/text files that are not under ``data_dir``."""
    return [data_dir / rel for rel in FILES.values() if not (data_dir / rel).is_file()]


def ingest_movielens(
    con: duckdb.DuckDBPyConnection, data_dir: Path, *, progress: bool = True
) -> MovieLensSummary:
    """Ingest MovieLens small with its item text (all-or-nothing; re-running adds nothing)."""
    data_dir = Path(data_dir)
    missing = missing_files(data_dir)
    if missing:
        raise DataValidationError(
            "MovieLens files not found: "
            + ", ".join(str(p) for p in missing)
            + "\n"
            + FETCH_HELP.replace("@DIR@", str(data_dir)),
            path=str(missing[0]),
        )
    paths = {name: data_dir / rel for name, rel in FILES.items()}
    for name, path in paths.items():  # whole-file checks before anything is written
        check_file(path, "csv" if name != "extrainfos" else "dat")
        if name in REQUIRED:
            found = staged_columns(con, path, "csv")
            lacking = [c for c in REQUIRED[name] if c not in found]
            if lacking:
                raise DataValidationError(
                    f"missing required column(s) {', '.join(lacking)} (row 0 is the header)",
                    path=str(path),
                    row=0,
                    column=lacking[0],
                )
    with transaction(con):
        items = _ingest_items(con, paths, progress)
        ratings = _ingest_ratings(con, paths["ratings"], progress)
        tags = _ingest_tags(con, paths["tags"], progress)
    results = (items, ratings, tags)
    summary = _summary(con, results, str(paths["movies"]))
    log.info("movielens: %s", {k: v for k, v in summary.__dict__.items() if k != "results"})
    return summary


def _ingest_items(
    con: duckdb.DuckDBPyConnection, paths: dict[str, Path], progress: bool
) -> IngestResult:
    with open_batch(
        con,
        SOURCE + "-items",
        str(paths["movies"]),
        steps=3,
        progress=progress,
        own_transaction=False,
    ) as batch:
        extra = batch.tmp("extra")
        con.register(extra, _read_extrainfos(paths["extrainfos"]))
        table = batch.tmp("movies")
        try:
            rows = stage_query(con, _items_sql(paths, extra), table, path=paths["movies"])
        finally:
            con.unregister(extra)
        batch.step(f"read {rows} movies")
        result = write_items(batch, table, rows_read=rows, path=str(paths["movies"]))
        batch.record(result)
        drop_stage(con, table)
    return result


def _items_sql(paths: dict[str, Path], extra: str) -> str:
    year_re = r"\((\d{4})[^)]*\)\s*$"
    kw = """list_transform(from_json(keywords, '[{"name":"VARCHAR"}]'), k -> k.name)"""
    return f"""
    WITH movies AS (SELECT * FROM {reader_sql(paths["movies"], "csv")}),
    links AS (SELECT movieId, nullif(trim(tmdbId), '') AS tmdb_id
              FROM {reader_sql(paths["links"], "csv")}),
    tmdb AS (SELECT trim(id) AS tmdb_id, nullif(trim(overview), '') AS overview,
                    nullif(trim(tagline), '') AS tagline,
                    CASE WHEN json_valid(keywords) THEN {kw} END AS keywords
             FROM {reader_sql(paths["tmdb"], "csv")}
             QUALIFY row_number() OVER (PARTITION BY trim(id) ORDER BY overview NULLS LAST) = 1),
    tags AS (SELECT trim(movieId) AS movieId, list(DISTINCT trim(tag) ORDER BY trim(tag)) AS tags
             FROM {reader_sql(paths["tags"], "csv")} WHERE nullif(trim(tag), '') IS NOT NULL
             GROUP BY ALL)
    SELECT trim(m.movieId) AS item_id,
        coalesce(nullif(regexp_replace(trim(m.title), '\\s*{year_re}', ''), ''), trim(m.title))
            AS title,
        coalesce(nullif(regexp_extract(trim(m.title), '{year_re}', 1), ''), e.year) AS year,
        coalesce(t.overview, e.plot) AS description,
        t.tagline,
        t.keywords,
        list_filter(string_split(m.genres, '|'), g -> g <> '(no genres listed)') AS genres,
        NULL::VARCHAR AS category,
        e.director, e.actors,
        coalesce(g.tags, []) AS tags,
        NULL::VARCHAR AS url,
        NULL::VARCHAR AS created_at
    FROM movies m
    LEFT JOIN links l ON trim(l.movieId) = trim(m.movieId)
    LEFT JOIN tmdb t ON t.tmdb_id = l.tmdb_id
    LEFT JOIN {extra} e ON e.movie_id = trim(m.movieId)
    LEFT JOIN tags g ON g.movieId = trim(m.movieId)"""


def _read_extrainfos(path: Path) -> pa.Table:
    """Parse the MeLU ``::``-separated file (small: 3.9k lines, so plain Python)."""
    columns: dict[str, list[str | None]] = {
        k: [] for k in ("movie_id", "year", "director", "actors", "plot")
    }
    with path.open(encoding="utf-8", newline="") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.rstrip("\r\n").split("::")
            if parts == [""]:
                continue
            if len(parts) < _EXTRA_FIELDS:
                raise DataValidationError(
                    f"expected {_EXTRA_FIELDS} '::'-separated fields, found {len(parts)}",
                    path=str(path),
                    row=line_no,
                    column=f"field {len(parts) + 1}",
                )
            # A plot containing '::' spreads over several fields; the poster URL is last.
            plot = "::".join(parts[9:-1])
            values = (parts[0], parts[2], parts[6], parts[8], plot)
            for key, value in zip(columns, values, strict=True):
                value = value.strip()
                columns[key].append(None if value in {"", "N/A"} else value)
    return pa.table({k: pa.array(v, type=pa.string()) for k, v in columns.items()})


def _events_batch(
    con: duckdb.DuckDBPyConnection, path: Path, kind: str, select: str, progress: bool
) -> IngestResult:
    with open_batch(
        con, kind, str(path), steps=4, progress=progress, own_transaction=False
    ) as batch:
        result = write_events(batch, f"{select} FROM {reader_sql(path, 'csv')}", path=str(path))
        batch.record(result)
    return result


def _ingest_ratings(con: duckdb.DuckDBPyConnection, path: Path, progress: bool) -> IngestResult:
    select = """SELECT 'ml:rate:' || trim(userId) || ':' || trim(movieId) || ':' || trim(timestamp)
        AS event_id, userId AS user_id, movieId AS item_id, 'rate' AS event_type,
        timestamp AS ts, rating AS value, NULL::VARCHAR AS text, NULL::VARCHAR AS request_id,
        NULL::VARCHAR AS position"""
    return _events_batch(con, path, SOURCE + "-ratings", select, progress)


def _ingest_tags(con: duckdb.DuckDBPyConnection, path: Path, progress: bool) -> IngestResult:
    select = """SELECT 'ml:tag:' || trim(userId) || ':' || trim(movieId) || ':' || trim(timestamp)
        || ':' || md5(coalesce(tag, ''))[:12] AS event_id, userId AS user_id,
        movieId AS item_id, 'tag' AS event_type, timestamp AS ts, NULL::VARCHAR AS value,
        tag AS text, NULL::VARCHAR AS request_id, NULL::VARCHAR AS position"""
    return _events_batch(con, path, SOURCE + "-tags", select, progress)


def _summary(
    con: duckdb.DuckDBPyConnection, results: tuple[IngestResult, ...], movies: str
) -> MovieLensSummary:
    row = con.execute(
        """SELECT
        (SELECT count(*) FROM events WHERE event_id LIKE 'ml:rate:%'),
        (SELECT count(*) FROM events WHERE event_id LIKE 'ml:tag:%'),
        count(*), count(description), count(*) FILTER (WHERE len(tags) > 0)
        FROM items WHERE source = ?""",
        [movies],
    ).fetchone()
    if row is None:  # an aggregate always returns a row
        raise RuntimeError("count query returned nothing")
    return MovieLensSummary(
        ratings=int(row[0]),
        tags=int(row[1]),
        movies=int(row[2]),
        items_with_text=int(row[3]),
        items_with_tags=int(row[4]),
        quarantined=sum(r.rows_quarantined for r in results),
        results=results,
    )
