"""MovieLens adapter on a tiny hand-made copy of the six files (answers known)."""

from __future__ import annotations

from pathlib import Path

import pytest

import feature_store.adapters.movielens as ml
from feature_store.db import table_counts
from recsys.core.errors import DataValidationError

TMDB_HEADER = (
    "budget,genres,homepage,id,keywords,original_language,original_title,overview,popularity,"
    "production_companies,production_countries,release_date,revenue,runtime,spoken_languages,"
    "status,tagline,title,vote_average,vote_count"
)


def tmdb_row(tmdb_id: str, overview: str, tagline: str, keywords: list[str]) -> str:
    kw = (
        "[" + ", ".join(f'{{""id"": {i}, ""name"": ""{k}""}}' for i, k in enumerate(keywords)) + "]"
    )
    return (
        f'0,[],,{tmdb_id},"{kw}",en,T,"{overview}",1.0,[],[],2000-01-01,0,90,[],Released,'
        f'"{tagline}",T,7,10'
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    ml_dir, text_dir = tmp_path / "movielens-small", tmp_path / "movie-text"
    ml_dir.mkdir()
    text_dir.mkdir()
    (ml_dir / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation\n"
        '2,"City, The (Ville, La) (1998)",Drama\n'
        "3,Untitled,(no genres listed)\n"
    )
    (ml_dir / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n2,01,999\n3,02,\n")
    (ml_dir / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964982704\n2,1,5.0,964982800\n"
    )
    (ml_dir / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n1,1,pixar,964982705\n2,1,fun,964982801\n2,1,pixar,964982802\n"
    )
    (text_dir / "tmdb_5000_movies.csv").write_text(
        TMDB_HEADER
        + "\n"
        + tmdb_row("862", "Toys come alive, in a room.", "Hi", ["toy", "boy"])
        + "\n"
        + tmdb_row("999", "", "", [])
        + "\n"
    )
    (text_dir / "movies_extrainfos.dat").write_bytes(
        b"1::Toy Story::1995::G::x::Animation::John Lasseter::w::Tom Hanks, Tim Allen::"
        b"Plot A::u\r\n"
        b"2::The City::1998::R::x::Drama::Jane Doe::w::N/A::A plot :: with colons::u\r\n"
        b"3::Untitled::2001::R::x::Drama::N/A::w::N/A::N/A::u\r\n"
    )
    return tmp_path


def test_mapping(store, data_dir):
    summary = ml.ingest_movielens(store, data_dir, progress=False)
    assert (summary.ratings, summary.tags, summary.movies) == (3, 3, 3)
    assert (summary.items_with_text, summary.items_with_tags, summary.quarantined) == (2, 1, 0)
    rows = store.execute(
        "SELECT item_id, title, year, description, tagline, keywords, genres, category, director,"
        " actors, tags FROM items ORDER BY item_id"
    ).fetchall()
    assert rows == [
        (
            "1",
            "Toy Story",
            1995,
            "Toys come alive, in a room.",
            "Hi",
            ["toy", "boy"],
            ["Adventure", "Animation"],
            "Adventure",
            "John Lasseter",
            "Tom Hanks, Tim Allen",
            ["fun", "pixar"],
        ),
        (
            "2",
            "City, The (Ville, La)",
            1998,
            "A plot :: with colons",
            None,
            [],
            ["Drama"],
            "Drama",
            "Jane Doe",
            None,
            [],
        ),
        ("3", "Untitled", 2001, None, None, None, [], None, None, None, []),
    ]
    events = store.execute(
        "SELECT event_id, event_type, value, text FROM events ORDER BY event_id"
    ).fetchall()
    assert events[0] == ("ml:rate:1:1:964982703", "rate", 4.0, None)
    assert [e[3] for e in events if e[1] == "tag"] == ["pixar", "fun", "pixar"]


def test_reingest_adds_nothing(store, data_dir):
    ml.ingest_movielens(store, data_dir, progress=False)
    before = table_counts(store)
    again = ml.ingest_movielens(store, data_dir, progress=False)
    assert [r.rows_written for r in again.results] == [3, 0, 0]  # items are replaced in place
    assert table_counts(store) == before


def test_failure_in_last_batch_rolls_back_all(store, data_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("killed while ingesting tags")

    monkeypatch.setattr(ml, "_ingest_tags", boom)
    with pytest.raises(RuntimeError):
        ml.ingest_movielens(store, data_dir, progress=False)
    assert table_counts(store) == {"items": 0, "users": 0, "events": 0, "quarantine": 0}
    assert store.execute("SELECT count(*) FROM ingest_batches").fetchone() == (0,)


def test_missing_column_writes_nothing(store, data_dir):
    (data_dir / "movielens-small" / "tags.csv").write_text("userId,movieId,timestamp\n1,1,5\n")
    with pytest.raises(DataValidationError) as err:
        ml.ingest_movielens(store, data_dir, progress=False)
    assert (err.value.row, err.value.column) == (0, "tag")
    assert "tags.csv" in str(err.value)
    assert table_counts(store)["items"] == 0


def test_bad_extrainfos_line_names_row(store, data_dir):
    (data_dir / "movie-text" / "movies_extrainfos.dat").write_text("1::Toy Story::1995\n")
    with pytest.raises(DataValidationError, match="expected 11") as err:
        ml.ingest_movielens(store, data_dir, progress=False)
    assert err.value.row == 1
    assert table_counts(store)["items"] == 0


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    """An ML-1M-style release: '::'-separated, no header, Latin-1, no links/tags/TMDB."""
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        '2::Café "Noir", Le (1998)::Drama\n'.encode("latin-1")
    )
    (folder / "ratings.dat").write_bytes(
        b"1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n"
    )
    return folder


@pytest.mark.parametrize("encoding", ["auto", "latin-1"])
def test_classic_dat_release_latin1(store, ml1m_dir, encoding):
    release = ml.locate(ml1m_dir, encoding)
    assert (release.fmt, release.encoding) == ("dat", "latin-1")
    assert set(release.paths) == {"ratings", "movies"}
    summary = ml.ingest_movielens(store, ml1m_dir, progress=False, encoding=encoding)
    assert (summary.ratings, summary.tags, summary.movies, summary.quarantined) == (3, 0, 2, 0)
    items = store.execute("SELECT item_id, title, year, genres FROM items ORDER BY item_id")
    assert items.fetchall() == [
        ("1", "Toy Story", 1995, ["Animation", "Children's", "Comedy"]),
        ("2", 'Café "Noir", Le', 1998, ["Drama"]),
    ]
    events = store.execute("SELECT event_id, value FROM events ORDER BY event_id").fetchall()
    assert events[0] == ("ml:rate:1:1:978300760", 5.0)


def test_dat_release_with_tags_utf8(store, ml1m_dir):
    (ml1m_dir / "movies.dat").write_text("1::Amélie (2001)::Comedy\n", encoding="utf-8")
    (ml1m_dir / "ratings.dat").write_text("1::1::4.5::1230000000\n")
    (ml1m_dir / "tags.dat").write_text("1::1::paris::1230000001\n", encoding="utf-8")
    assert ml.locate(ml1m_dir).encoding == "utf-8"
    summary = ml.ingest_movielens(store, ml1m_dir, progress=False)
    assert (summary.ratings, summary.tags, summary.items_with_tags) == (1, 1, 1)
    assert store.execute("SELECT title, tags FROM items").fetchall() == [("Amélie", ["paris"])]


def test_no_release_found_says_what_to_put_where(store, tmp_path):
    with pytest.raises(DataValidationError, match="ratings.csv or ratings.dat") as err:
        ml.ingest_movielens(store, tmp_path, progress=False)
    assert "ML-1M" in str(err.value)
