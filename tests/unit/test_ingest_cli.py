"""`recsys ingest ...` through click's CliRunner: exit codes, summaries, error messages."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from feature_store.db import table_counts
from recsys.cli import main
from tests.unit.test_ingest import BAD_FILES, EVENTS_CSV, ITEMS_CSV, write

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def run(home: Path, *args: str):
    return CliRunner().invoke(main, ["--home", str(home), "--log-level", "ERROR", *args])


def counts(home: Path) -> dict[str, int]:
    con = duckdb.connect(str(home / "recsys.duckdb"), read_only=True)
    try:
        out = table_counts(con)
        out["batches"] = con.execute("SELECT count(*) FROM ingest_batches").fetchone()[0]
        return out
    finally:
        con.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    result = run(home, "ingest", "items", str(write(tmp_path / "items.csv", ITEMS_CSV)))
    assert result.exit_code == 0, result.output
    return home


def test_quarantined_rows_exit_3_and_are_listed(home, tmp_path):
    result = run(home, "ingest", "events", str(write(tmp_path / "ev.csv", EVENTS_CSV)))
    assert result.exit_code == 3, result.output
    assert "read 6, written 3, duplicate 0, quarantined 3" in result.output
    assert "quarantined 1 x bad timestamp" in result.output
    assert f"file {tmp_path / 'ev.csv'}, row 5, column 'ts': bad timestamp" in result.output
    assert counts(home)["events"] == 3


def test_clean_file_exits_0_and_reingest_adds_nothing(home, tmp_path):
    path = write(tmp_path / "ok.csv", "user_id,item_id,event_type,ts\nu1,i1,click,1600000000\n")
    first = run(home, "ingest", "events", str(path))
    assert first.exit_code == 0 and "written 1," in first.output
    again = run(home, "ingest", "events", str(path))
    assert again.exit_code == 0 and "written 0, duplicate 1" in again.output


def test_strict_exits_1_and_writes_nothing(home, tmp_path):
    before = counts(home)
    result = run(home, "ingest", "events", "--strict", str(write(tmp_path / "ev.csv", EVENTS_CSV)))
    assert result.exit_code == 1
    assert f"file {tmp_path / 'ev.csv'}, row 3, column 'value'" in result.output
    assert counts(home) == before


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_file_exits_1_naming_file_row_column(home, tmp_path, case):
    name, content, row, column, words = BAD_FILES[case]
    path = write(tmp_path / name, content)
    before = counts(home)
    result = run(home, "ingest", "events", str(path))
    assert result.exit_code == 1, result.output
    assert f"file {path}" in result.output and words in result.output
    if row is not None:
        assert f"row {row}" in result.output
    if column is not None:
        assert f"column {column!r}" in result.output
    assert counts(home) == before


def test_missing_file_exits_1(home, tmp_path):
    result = run(home, "ingest", "events", str(tmp_path / "nope.csv"))
    assert result.exit_code == 1
    assert f"file {tmp_path / 'nope.csv'}: file does not exist" in result.output


def test_movielens_missing_files_says_what_to_fetch(tmp_path):
    result = run(tmp_path / "home", "ingest", "movielens", "--data-dir", str(tmp_path / "empty"))
    assert result.exit_code == 1
    for words in ("ml-latest-small", "TMDB 5000", "movies_extrainfos.dat", "movielens-small/"):
        assert words in result.output


def test_mind_command(tmp_path):
    result = run(tmp_path / "home", "ingest", "mind", str(FIXTURES / "mind"))
    assert result.exit_code == 0, result.output
    expected = "5 news, 4 impression lines -> 9 impression, 4 click and 3 history-click"
    assert expected in result.output
