"""``recsys features REQUESTS_FILE --output OUT.parquet``: point-in-time features for a file of
(user_id, item_id, as_of) rows, computed by the same function training and serving call."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click
import polars as pl

from feature_store.db import connect
from feature_store.features import FEATURE_COLUMNS, compute_features
from recsys.cli import settings_from
from recsys.core.errors import DataValidationError
from recsys.core.rules import FIT_SCOPE, LIVE_SCOPE, TRAIN_SCOPE

log = logging.getLogger(__name__)


@click.command()
@click.argument("requests_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Parquet file to write: the request columns followed by every feature.",
)
@click.option(
    "--events",
    "events",
    default="events",
    show_default=True,
    type=click.Choice([s.events for s in (LIVE_SCOPE, TRAIN_SCOPE, FIT_SCOPE)]),
    help="Event relation to read: the live table or a protocol v1 view.",
)
@click.pass_context
def features(ctx: click.Context, requests_file: Path, output: Path, events: str) -> None:
    """Compute features for REQUESTS_FILE (CSV or Parquet with user_id, item_id, as_of)."""
    settings = settings_from(ctx)
    requests = read_requests(requests_file)
    log.info("read %d request rows from %s", requests.height, requests_file)
    con = connect(settings.db_path, read_only=True)
    try:
        started = time.perf_counter()
        out = compute_features(
            con,
            requests,
            events=events,
            covisit_window_days=settings.ranker.covisit_window_days,
        )
        elapsed = time.perf_counter() - started
    finally:
        con.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    out.write_parquet(output)
    log.info("wrote %d rows x %d features to %s", out.height, len(FEATURE_COLUMNS), output)
    click.echo(
        f"{out.height} rows, {len(FEATURE_COLUMNS)} features from {events} in {elapsed:.2f} s "
        f"-> {output}"
    )
    if out.height:
        summary = out.select(FEATURE_COLUMNS).describe()
        stats = summary.filter(pl.col("statistic").is_in(["null_count", "mean", "min", "max"]))
        click.echo("feature                     nulls        mean         min         max")
        for name in FEATURE_COLUMNS:
            nulls, mean, low, high = stats[name].to_list()
            click.echo(
                f"{name:26s} {_fmt(nulls):>6s} {_fmt(mean):>11s} {_fmt(low):>11s} {_fmt(high):>11s}"
            )


def read_requests(path: Path) -> pl.DataFrame:
    """user_id, item_id (as text) and as_of (parsed as UTC) from a CSV or Parquet file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif suffix in {".csv", ".tsv"}:
            frame = pl.read_csv(
                path,
                separator="\t" if suffix == ".tsv" else ",",
                schema_overrides={"user_id": pl.Utf8, "item_id": pl.Utf8},
            )
        else:
            raise DataValidationError("use a .csv, .tsv or .parquet file", path=str(path))
    except pl.exceptions.PolarsError as exc:
        raise DataValidationError(f"cannot read requests: {exc}", path=str(path)) from exc
    missing = [c for c in ("user_id", "item_id", "as_of") if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"missing column(s) {', '.join(missing)}; need user_id, item_id, as_of", path=str(path)
        )
    frame = frame.with_columns(pl.col("user_id", "item_id").cast(pl.Utf8))
    if frame.schema["as_of"] == pl.Utf8:
        try:
            frame = frame.with_columns(pl.col("as_of").str.to_datetime(time_zone="UTC"))
        except pl.exceptions.PolarsError as exc:
            raise DataValidationError(
                f"as_of is not an ISO timestamp ({exc})", path=str(path), column="as_of"
            ) from exc
    elif frame.schema["as_of"].is_integer():  # unix seconds
        frame = frame.with_columns(pl.from_epoch("as_of", time_unit="s"))
    return frame


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
