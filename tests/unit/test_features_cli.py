"""``recsys features`` on a tiny store: reading request files and writing features."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from feature_store.db import connect
from feature_store.features import FEATURE_COLUMNS
from recsys.cli import main
from recsys.cli.features import read_requests
from recsys.core.config import Settings
from recsys.core.errors import DataValidationError
from tests.factories import load_into_store, make_catalog, make_events


def test_read_requests_parses_iso_and_unix_times(tmp_path: Path) -> None:
    iso = tmp_path / "a.csv"
    iso.write_text("user_id,item_id,as_of\n7,i1,2020-01-02T03:04:05Z\n")
    unix = tmp_path / "b.csv"
    unix.write_text("user_id,item_id,as_of\n7,i1,1577934245\n")
    for path in (iso, unix):
        frame = read_requests(path)
        assert frame["user_id"].to_list() == ["7"]
        assert frame["as_of"].dt.replace_time_zone(None).to_list() == [
            datetime(2020, 1, 2, 3, 4, 5)
        ]


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("r.json", "{}", "csv"),
        ("r.csv", "user_id,as_of\n1,2020-01-01\n", "item_id"),
        ("r.csv", "user_id,item_id,as_of\n1,2,yesterday\n", "ISO"),
    ],
)
def test_read_requests_rejects_bad_files(
    tmp_path: Path, name: str, body: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(DataValidationError, match=message):
        read_requests(path)


def test_cli_writes_features(settings: Settings, tmp_path: Path) -> None:
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    requests = tmp_path / "req.parquet"
    pl.DataFrame(
        {"user_id": ["u1", "u2"], "item_id": ["i3", "i4"], "as_of": [datetime(2020, 2, 1)] * 2}
    ).write_parquet(requests)
    out = tmp_path / "f.parquet"
    result = CliRunner().invoke(
        main, ["--home", str(settings.home), "features", str(requests), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "2 rows, 26 features from events" in result.output
    frame = pl.read_parquet(out)
    assert frame.columns == ["user_id", "item_id", "as_of", *FEATURE_COLUMNS]
    assert frame["user_events_all"].to_list() == [15.0, 15.0]
