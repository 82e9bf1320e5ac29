"""`recsys ingest movielens` on the real data from a fresh home (counts in ../shared/data)."""

from __future__ import annotations

import time

import duckdb
import pytest
from click.testing import CliRunner

from recsys.cli import main

pytestmark = pytest.mark.integration


def test_movielens_from_fresh_home(tmp_path, real_data_dir):
    home = tmp_path / "home"
    args = [
        "--home",
        str(home),
        "--log-level",
        "ERROR",
        "ingest",
        "movielens",
        "--data-dir",
        str(real_data_dir),
    ]
    started = time.monotonic()
    first = CliRunner().invoke(main, args)
    seconds = time.monotonic() - started
    assert first.exit_code == 0, first.output
    assert (
        "movielens: 100,836 rate events, 3,683 tag events, 9,742 movies; "
        "text (overview or plot) for 5,413 movies"
    ) in first.output
    assert seconds < 60, f"ingest took {seconds:.1f} s"  # about 2-6 s on a shared 2-core box

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "ratings.csv: read 100,836, written 0, duplicate 100,836, quarantined 0" in again.output
    assert "tags.csv: read 3,683, written 0, duplicate 3,683" in again.output

    con = duckdb.connect(str(home / "recsys.duckdb"), read_only=True)
    try:
        counts = dict(
            con.execute("SELECT event_type, count(*) FROM events GROUP BY ALL").fetchall()
        )
        assert counts == {"rate": 100_836, "tag": 3_683}
        assert con.execute("SELECT count(*), count(DISTINCT item_id) FROM items").fetchone() == (
            9_742,
            9_742,
        )
        assert con.execute("SELECT count(*) FROM users").fetchone() == (610,)
        assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
        toy = con.execute("""SELECT title, year, genres, director, list_contains(tags, 'pixar'),
            description LIKE '%Woody%' FROM items WHERE item_id = '1'""").fetchone()
        assert toy == (
            "Toy Story",
            1995,
            ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
            "John Lasseter",
            True,
            True,
        )
        rated = con.execute("""SELECT count(*) FROM events e JOIN items i USING (item_id)
            WHERE e.event_type = 'rate' AND i.description IS NOT NULL""").fetchone()
        assert rated == (89_816,)  # ratings on movies with text, as the data README says
    finally:
        con.close()
