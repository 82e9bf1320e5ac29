"""``recsys ingest events|items|movielens|mind``: load source files into the store
(``recsys ingest example``: write a synthetic example log to ingest).

Exit codes: 0 everything was written; 1 the input could not be ingested (missing or malformed
file, or ``--strict`` and a bad row): nothing was written; 2 bad command-line usage; 3 the batch
was written but some rows were quarantined (listed in the output and in the ``quarantine`` table).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import duckdb

from feature_store.adapters.mind import ingest_mind
from feature_store.adapters.movielens import ingest_movielens
from feature_store.db import connect
from feature_store.ingest import ingest_events_file, ingest_items_file
from feature_store.task import apply_task
from recsys.cli import example_logs, settings_from

EXIT_QUARANTINED = 3
_SHOW_BAD_ROWS = 5
_FORMATS = ("csv", "tsv", "parquet", "jsonl")


@click.group()
def ingest() -> None:
    """Load events and items into the DuckDB store (validated; bad rows -> quarantine).

    \b
    Exit codes: 0 all rows written; 1 input rejected, nothing written;
    2 usage error; 3 written, but some rows were quarantined.
    """


@ingest.command("events")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(_FORMATS), help="Default: from the suffix.")
@click.option("--strict", is_flag=True, help="Reject the whole file on the first bad row.")
@click.pass_context
def events(ctx: click.Context, file: Path, fmt: str | None, strict: bool) -> None:
    """Ingest an events FILE (CSV, TSV, Parquet or JSONL; columns in docs/ingest.md)."""
    with _store(ctx) as con:
        started = time.monotonic()
        result = ingest_events_file(con, file, fmt=fmt, strict=strict)
        _report(ctx, con, [result], started)


@ingest.command("items")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(_FORMATS), help="Default: from the suffix.")
@click.option("--strict", is_flag=True, help="Reject the whole file on the first bad row.")
@click.pass_context
def items(ctx: click.Context, file: Path, fmt: str | None, strict: bool) -> None:
    """Ingest an items FILE; an item id already in the store is replaced."""
    with _store(ctx) as con:
        started = time.monotonic()
        result = ingest_items_file(con, file, fmt=fmt, strict=strict)
        _report(ctx, con, [result], started)


@ingest.command("movielens")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Holds movielens-small/ and movie-text/, or is a MovieLens release folder "
    "(ml-latest-small, ML-1M, ML-10M) itself (default: the root --data-dir).",
)
@click.option(
    "--encoding",
    type=click.Choice(("auto", "utf-8", "latin-1")),
    default="auto",
    show_default=True,
    help="Encoding of the '::' files (ML-1M is Latin-1); auto: UTF-8 if they decode as UTF-8.",
)
@click.pass_context
def movielens(ctx: click.Context, data_dir: Path | None, encoding: str) -> None:
    """Ingest MovieLens (ml-latest-small or a '::' release) with optional TMDB/OMDb item text."""
    settings = settings_from(ctx, data_dir=str(data_dir) if data_dir else None)
    with _store(ctx) as con:
        started = time.monotonic()
        summary = ingest_movielens(con, settings.data_dir, encoding=encoding)
        click.echo(
            f"movielens: {summary.ratings:,} rate events, {summary.tags:,} tag events, "
            f"{summary.movies:,} movies; text (overview or plot) for "
            f"{summary.items_with_text:,} movies "
            f"({summary.items_with_text / max(summary.movies, 1):.1%}),"
            f" user tags for {summary.items_with_tags:,}"
        )
        _report(ctx, con, summary.results, started)


@ingest.command("mind")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def mind(ctx: click.Context, directory: Path) -> None:
    """Ingest a MIND-style DIRECTORY holding news.tsv and behaviors.tsv."""
    with _store(ctx) as con:
        started = time.monotonic()
        summary = ingest_mind(con, directory)
        click.echo(
            f"mind: {summary.news:,} news, {summary.impressions:,} impression lines -> "
            f"{summary.impression_events:,} impression, {summary.click_events:,} click and "
            f"{summary.history_events:,} history-click events written"
        )
        _report(ctx, con, summary.results, started)


@ingest.command("example")
@click.argument("shape", type=click.Choice(("mind", "events")))
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--users", type=click.IntRange(min=1), help="Default: 300 (mind), 400 (events).")
@click.option("--items", "n_items", type=click.IntRange(min=8), help="Default: 600 / 800.")
@click.option("--seed", type=int, default=0, show_default=True)
def example(shape: str, directory: Path, users: int | None, n_items: int | None, seed: int) -> None:
    """Write a seeded synthetic log to DIRECTORY (nothing is ingested): SHAPE ``mind`` is a
    MIND-style impression log (news.tsv, behaviors.tsv), ``events`` a click/purchase CSV with
    items.csv; clicks follow each user's category interests (docs/ingest.md)."""
    sizes = {k: v for k, v in (("n_users", users), ("n_items", n_items)) if v is not None}
    if shape == "mind":
        example_logs.write_mind(directory, seed=seed, **sizes)
        click.echo(
            f"wrote {directory}/news.tsv and behaviors.tsv; next: recsys ingest mind {directory}"
        )
    else:
        items_csv, events_csv = example_logs.write_events(directory, seed=seed, **sizes)
        click.echo(
            f"wrote {items_csv} and {events_csv}; next: recsys ingest items {items_csv}"
            f" && recsys ingest events {events_csv}"
        )


@contextmanager
def _store(ctx: click.Context) -> Iterator[duckdb.DuckDBPyConnection]:
    """The settings' store, open read-write for one command."""
    con = connect(settings_from(ctx).db_path)
    try:
        yield con
    finally:
        con.close()


def _report(
    ctx: click.Context, con: duckdb.DuckDBPyConnection, results: Iterable, started: float
) -> None:
    """Print counts per batch and the first quarantined rows; exit 3 if any row was bad."""
    results = list(results)
    for r in results:
        click.echo(
            f"{r.kind} {r.source}: read {r.rows_read:,}, written {r.rows_written:,}, "
            f"duplicate {r.rows_duplicate:,}, quarantined {r.rows_quarantined:,}"
        )
        for reason, count in r.reasons.items():
            click.echo(f"  quarantined {count:,} x {reason}")
    bad = sum(r.rows_quarantined for r in results)
    if bad:
        rows = con.execute(
            f"""SELECT source, row_number, column_name, reason, raw FROM quarantine
                WHERE source IN (SELECT unnest($sources)) ORDER BY source, row_number
                LIMIT {_SHOW_BAD_ROWS}""",
            # by source: a re-ingest does not copy rows already quarantined from the same file
            {"sources": [r.source for r in results if r.rows_quarantined]},
        ).fetchall()
        click.echo(f"first quarantined rows (all {bad:,} are in the quarantine table):", err=True)
        for source, row, column, reason, raw in rows:
            click.echo(f"  file {source}, row {row}, column {column!r}: {reason}  {raw}", err=True)
    task = apply_task(con, settings_from(ctx).task)
    click.echo(task.describe())
    click.echo(f"done in {time.monotonic() - started:.1f} s; store {settings_from(ctx).db_path}")
    if bad:
        ctx.exit(EXIT_QUARANTINED)
