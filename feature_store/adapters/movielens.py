"""MovieLens (ml-latest-small, or a classic ``::`` release such as ML-1M / ML-10M, + optional
TMDB 5000 and MeLU item text) -> items and rate/tag events.

Layouts found under the data directory (:func:`locate`): ``movielens-small/*.csv`` (the
documented layout), or the release folder itself holding ``ratings.csv`` + ``movies.csv`` or
``ratings.dat`` + ``movies.dat`` (``::``-separated, no header).  Ratings and movies are required;
tags, ``links.csv``, ``movie-text/tmdb_5000_movies.csv`` and ``movie-text/movies_extrainfos.dat``
are used when present.  ``.dat`` files are read in the encoding given, or detected (UTF-8 when
the file decodes as UTF-8, else Latin-1, the encoding of ML-1M); CSV files must be UTF-8.

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
OPTIONAL = ("tags", "links", "tmdb", "extrainfos")
ENCODINGS = ("auto", "utf-8", "latin-1")
# ``::`` releases have no header: their columns, named as in the CSV release
DAT_COLUMNS = {
    "ratings": ("userId", "movieId", "rating", "timestamp"),
    "movies": ("movieId", "title", "genres"),
    "tags": ("userId", "movieId", "tag", "timestamp"),
}
FETCH_HELP = """\
Put the public files under @DIR@ like this:
  @DIR@/movielens-small/{ratings,movies}.csv (required), {tags,links}.csv (optional)
      from the GroupLens "ml-latest-small" zip
      (https://files.grouplens.org/datasets/movielens/ml-latest-small.zip; unzip and rename the
      folder ml-latest-small -> movielens-small)
  or a classic release folder as unzipped (ML-1M, ML-10M: ratings.dat, movies.dat, tags.dat)
      passed itself as @DIR@
  @DIR@/movie-text/tmdb_5000_movies.csv (optional)
      from the Kaggle "TMDB 5000 Movie Dataset" (tmdb-movie-metadata)
  @DIR@/movie-text/movies_extrainfos.dat (optional)
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


@dataclass(frozen=True)
class Release:
    """The MovieLens files found: ``paths`` has every required file and the optional ones found."""

    paths: dict[str, Path]
    fmt: str  # csv | dat
    encoding: str  # of the .dat files: utf-8 | latin-1


def locate(data_dir: Path, encoding: str = "auto") -> Release:
    """Find a MovieLens release under ``data_dir`` (see the module docstring)."""
    if encoding not in ENCODINGS:
        raise DataValidationError(f"encoding must be one of {', '.join(ENCODINGS)}; got {encoding}")
    data_dir = Path(data_dir)
    for folder in (data_dir / "movielens-small", data_dir):
        fmt = next((f for f in ("csv", "dat") if (folder / f"ratings.{f}").is_file()), None)
        if fmt is not None:
            break
    else:
        raise DataValidationError(
            "MovieLens ratings not found (ratings.csv or ratings.dat)\n"
            + FETCH_HELP.replace("@DIR@", str(data_dir)),
            path=str(data_dir / FILES["ratings"]),
        )
    paths = {name: folder / f"{name}.{fmt}" for name in ("ratings", "movies", "tags")}
    paths["links"] = folder / "links.csv"
    for name in ("tmdb", "extrainfos"):
        file = Path(FILES[name]).name
        paths[name] = next(
            (d / file for d in (data_dir / "movie-text", folder) if (d / file).is_file()),
            data_dir / FILES[name],
        )
    if not paths["movies"].is_file():
        raise DataValidationError(
            f"MovieLens movies file not found beside {paths['ratings'].name}\n"
            + FETCH_HELP.replace("@DIR@", str(data_dir)),
            path=str(paths["movies"]),
        )
    found = {k: p for k, p in paths.items() if k not in OPTIONAL or p.is_file()}
    if encoding == "auto":
        encoding = "utf-8"
        if fmt == "dat" and not all(_is_utf8(found[k]) for k in DAT_COLUMNS if k in found):
            encoding = "latin-1"
    skipped = sorted(set(OPTIONAL) - set(found))
    log.info(
        "movielens: %s release in %s (%s)%s",
        fmt,
        folder,
        encoding,
        f"; not found, skipped: {', '.join(skipped)}" if skipped else "",
    )
    return Release(found, fmt, encoding)


def missing_files(data_dir: Path) -> list[Path]:
    """The files of the documented ml-latest-small + text layout not under ``data_dir``."""
    return [data_dir / rel for rel in FILES.values() if not (data_dir / rel).is_file()]


def ingest_movielens(
    con: duckdb.DuckDBPyConnection,
    data_dir: Path,
    *,
    progress: bool = True,
    encoding: str = "auto",
) -> MovieLensSummary:
    """Ingest a MovieLens release with its item text (all-or-nothing; re-running adds nothing)."""
    release = locate(Path(data_dir), encoding)
    rel = {name: _relation(release, name) for name in release.paths}
    _check_files(con, release)
    with transaction(con):
        items = _ingest_items(con, release, rel, progress)
        ratings = _events_batch(
            con,
            release.paths["ratings"],
            SOURCE + "-ratings",
            RATINGS_SELECT + rel["ratings"],
            progress,
        )
        results = [items, ratings]
        if "tags" in release.paths:
            results.append(_ingest_tags(con, release.paths["tags"], rel["tags"], progress))
    summary = _summary(con, tuple(results), str(release.paths["movies"]))
    log.info("movielens: %s", {k: v for k, v in summary.__dict__.items() if k != "results"})
    return summary


def _check_files(con: duckdb.DuckDBPyConnection, release: Release) -> None:
    """Whole-file checks before anything is written."""
    for name, path in release.paths.items():
        dat = release.fmt == "dat" and name in DAT_COLUMNS
        if dat and release.encoding != "utf-8":
            if path.stat().st_size == 0:
                raise DataValidationError("file is empty", path=str(path), row=0)
            continue
        check_file(path, "dat" if dat or name == "extrainfos" else "csv")
        if name in REQUIRED and not dat:
            found = staged_columns(con, path, "csv")
            lacking = [c for c in REQUIRED[name] if c not in found]
            if lacking:
                raise DataValidationError(
                    f"missing required column(s) {', '.join(lacking)} (row 0 is the header)",
                    path=str(path),
                    row=0,
                    column=lacking[0],
                )


def _relation(release: Release, name: str) -> str:
    """The SQL relation reading one file (``::`` files with the CSV release's column names)."""
    path = release.paths[name]
    if release.fmt == "dat" and name in DAT_COLUMNS:
        cols = ", ".join(f"'{c}': 'VARCHAR'" for c in DAT_COLUMNS[name])
        quoted = str(path).replace("'", "''")
        return (
            f"read_csv('{quoted}', delim='::', header=false, quote='', escape='', "
            f"columns={{{cols}}}, auto_detect=false, strict_mode=true, "
            f"encoding='{release.encoding}')"
        )
    return reader_sql(path, "csv")


def _is_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _ingest_items(
    con: duckdb.DuckDBPyConnection, release: Release, rel: dict[str, str], progress: bool
) -> IngestResult:
    movies = release.paths["movies"]
    with open_batch(
        con, SOURCE + "-items", str(movies), steps=3, progress=progress, own_transaction=False
    ) as batch:
        extra = batch.tmp("extra")
        con.register(extra, _read_extrainfos(release.paths.get("extrainfos")))
        table = batch.tmp("movies")
        try:
            rows = stage_query(con, _items_sql(rel, extra), table, path=movies)
        finally:
            con.unregister(extra)
        batch.step(f"read {rows} movies")
        result = write_items(batch, table, rows_read=rows, path=str(movies))
        batch.record(result)
        drop_stage(con, table)
    return result


def _items_sql(rel: dict[str, str], extra: str) -> str:
    year_re = r"\((\d{4})[^)]*\)\s*$"
    kw = """list_transform(from_json(keywords, '[{"name":"VARCHAR"}]'), k -> k.name)"""
    links = rel.get("links", "(SELECT NULL::VARCHAR AS movieId, NULL::VARCHAR AS tmdbId LIMIT 0)")
    tmdb = rel.get(
        "tmdb",
        "(SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS overview, NULL::VARCHAR AS tagline, "
        "NULL::VARCHAR AS keywords LIMIT 0)",
    )
    tags = rel.get("tags", "(SELECT NULL::VARCHAR AS movieId, NULL::VARCHAR AS tag LIMIT 0)")
    return f"""
    WITH movies AS (SELECT * FROM {rel["movies"]}),
    links AS (SELECT movieId, nullif(trim(tmdbId), '') AS tmdb_id FROM {links}),
    tmdb AS (SELECT trim(id) AS tmdb_id, nullif(trim(overview), '') AS overview,
                    nullif(trim(tagline), '') AS tagline,
                    CASE WHEN json_valid(keywords) THEN {kw} END AS keywords
             FROM {tmdb}
             QUALIFY row_number() OVER (PARTITION BY trim(id) ORDER BY overview NULLS LAST) = 1),
    tags AS (SELECT trim(movieId) AS movieId, list(DISTINCT trim(tag) ORDER BY trim(tag)) AS tags
             FROM {tags} WHERE nullif(trim(tag), '') IS NOT NULL
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


def _read_extrainfos(path: Path | None) -> pa.Table:
    """Parse the MeLU ``::``-separated file (small: 3.9k lines, so plain Python); None: empty."""
    columns: dict[str, list[str | None]] = {
        k: [] for k in ("movie_id", "year", "director", "actors", "plot")
    }
    if path is None:
        return pa.table({k: pa.array([], type=pa.string()) for k in columns})
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
        result = write_events(batch, select, path=str(path))
        batch.record(result)
    return result


RATINGS_SELECT = """SELECT 'ml:rate:' || trim(userId) || ':' || trim(movieId) || ':'
    || trim(timestamp) AS event_id, userId AS user_id, movieId AS item_id, 'rate' AS event_type,
    timestamp AS ts, rating AS value, NULL::VARCHAR AS text, NULL::VARCHAR AS request_id,
    NULL::VARCHAR AS position FROM """


def _ingest_tags(
    con: duckdb.DuckDBPyConnection, path: Path, relation: str, progress: bool
) -> IngestResult:
    select = f"""SELECT 'ml:tag:' || trim(userId) || ':' || trim(movieId) || ':'
        || trim(timestamp) || ':' || md5(coalesce(tag, ''))[:12] AS event_id, userId AS user_id,
        movieId AS item_id, 'tag' AS event_type, timestamp AS ts, NULL::VARCHAR AS value,
        tag AS text, NULL::VARCHAR AS request_id, NULL::VARCHAR AS position FROM {relation}"""
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
