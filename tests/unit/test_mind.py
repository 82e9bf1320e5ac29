"""MIND-style adapter on the fixture in tests/fixtures/mind (answers worked out by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feature_store.adapters.mind import ingest_mind
from recsys.core.errors import DataValidationError

MIND = Path(__file__).resolve().parents[1] / "fixtures" / "mind"


def test_impressions_and_clicks_share_request_ids_and_positions(store):
    summary = ingest_mind(store, MIND, progress=False)
    assert (summary.news, summary.impressions) == (5, 4)
    assert (summary.impression_events, summary.click_events, summary.history_events) == (9, 4, 3)
    rows = store.execute(
        "SELECT request_id, position, item_id, event_type FROM events "
        "WHERE request_id IS NOT NULL ORDER BY request_id, position, event_type DESC"
    ).fetchall()
    assert rows == [
        ("1", 0, "N3", "impression"),
        ("1", 1, "N4", "impression"),
        ("1", 1, "N4", "click"),
        ("1", 2, "N5", "impression"),
        ("2", 0, "N1", "impression"),
        ("2", 0, "N1", "click"),
        ("2", 1, "N2", "impression"),
        ("2", 1, "N2", "click"),
        ("3", 0, "N5", "impression"),
        ("3", 0, "N5", "click"),
        ("3", 1, "N3", "impression"),
        ("4", 0, "N2", "impression"),
        ("4", 1, "N3", "impression"),  # test split: no labels
    ]
    # a click has exactly the time of its impression
    same_time = store.execute("""SELECT count(*) FROM events c JOIN events i
        ON c.request_id = i.request_id AND c.position = i.position
        WHERE c.event_type = 'click' AND i.event_type = 'impression' AND c.ts = i.ts""")
    assert same_time.fetchone() == (4,)


def test_history_is_one_second_before_first_impression(store):
    ingest_mind(store, MIND, progress=False)
    rows = store.execute("""SELECT user_id, item_id, strftime(ts, '%Y-%m-%d %H:%M:%S')
        FROM events WHERE event_id LIKE 'mind:hist:%' ORDER BY ALL""").fetchall()
    assert rows == [
        ("U1", "N1", "2019-11-15 08:55:21"),
        ("U1", "N2", "2019-11-15 08:55:21"),
        ("U3", "N4", "2019-11-16 13:29:59"),
    ]


def test_news_become_items_and_reingest_adds_nothing(store):
    ingest_mind(store, MIND, progress=False)
    item = store.execute(
        "SELECT title, genres, category, tags, description, url FROM items WHERE item_id = 'N1'"
    ).fetchone()
    assert item == (
        'Leaders meet at the "summit"',
        None,
        "news",
        ["newsworld"],
        "Two leaders met to talk about trade.",
        "https://example.com/n1",
    )
    before = store.execute("SELECT count(*) FROM events").fetchone()
    again = ingest_mind(store, MIND, progress=False)
    assert again.impression_events == 0 and again.results[1].rows_duplicate == 16
    assert store.execute("SELECT count(*) FROM events").fetchone() == before
    assert store.execute("SELECT count(*) FROM items").fetchone() == (5,)


def test_unknown_news_and_bad_time_are_quarantined(store, tmp_path):
    (tmp_path / "news.tsv").write_text((MIND / "news.tsv").read_text())
    (tmp_path / "behaviors.tsv").write_text(
        "1\tU1\t11/15/2019 8:55:22 AM\t\tN1-1 N99-0\n2\tU2\tnot a time\t\tN2-0\n"
    )
    summary = ingest_mind(store, tmp_path, progress=False)
    assert summary.results[1].reasons == {"unknown item id": 1, "bad timestamp": 1}
    bad = store.execute(
        "SELECT row_number, column_name, reason FROM quarantine ORDER BY 1"
    ).fetchall()
    assert bad == [(1, "item_id", "unknown item id"), (2, "ts", "bad timestamp")]
    assert summary.impression_events == 1 and summary.click_events == 1


def test_missing_mind_file(store, tmp_path):
    with pytest.raises(DataValidationError, match="behaviors.tsv"):
        (tmp_path / "news.tsv").write_text((MIND / "news.tsv").read_text())
        ingest_mind(store, tmp_path, progress=False)


def test_growing_histories_do_not_leak_later_labels(store, tmp_path):
    """A converted log whose later lines list the clicks of earlier impressions: each history
    item is known only from the line that first lists it (or is the earlier click itself)."""
    (tmp_path / "news.tsv").write_text((MIND / "news.tsv").read_text())
    (tmp_path / "behaviors.tsv").write_text(
        "1\tU9\t11/15/2019 8:00:00 AM\tN1\tN2-1 N3-0\n"
        "2\tU9\t11/15/2019 9:00:00 AM\tN1 N2 N4\tN5-1 N3-0\n"
        "3\tU9\t11/15/2019 10:00:00 AM\tN1 N2 N4 N5\tN3-1\n"
    )
    ingest_mind(store, tmp_path, progress=False)
    hist = store.execute("""SELECT item_id, strftime(ts, '%H:%M:%S') FROM events
        WHERE event_id LIKE 'mind:hist:%' ORDER BY ALL""").fetchall()
    # N1 before line 1; N4 only before line 2; N2 and N5 are the clicks of lines 1 and 2
    assert hist == [("N1", "07:59:59"), ("N4", "08:59:59")]
    known_at_line_1 = store.execute("""SELECT item_id FROM events WHERE event_type = 'click'
        AND ts < TIMESTAMP '2019-11-15 08:00:00' ORDER BY ALL""").fetchall()
    assert known_at_line_1 == [("N1",)]
