"""Hard negatives: the ranker's training frame holds the items shown in the label window."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from feature_store.adapters.mind import ingest_mind
from feature_store.db import connect
from feature_store.interactions import Interactions
from feature_store.splits import ensure_split
from feature_store.task import apply_task
from recsys.algorithms.candidates import Blender, Popularity
from recsys.core.config import Settings, load_settings
from tests.dask_cluster import local_client
from tests.log_factories import write_mind
from training.ranker import dataset
from training.ranker.served import SERVED, group_columns


@pytest.fixture(scope="module")
def mind_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, duckdb.DuckDBPyConnection]:
    root = tmp_path_factory.mktemp("served")
    settings = load_settings(
        environ={},
        overrides={
            "home": str(root / "home"),
            "split.kind": "global_time",
            "ranker.num_candidates": 4,
        },
    )
    con = connect(settings.db_path)
    ingest_mind(con, write_mind(root / "mind", n_users=8, n_items=24), progress=False)
    apply_task(con, settings.task)
    ensure_split(con, settings.split)
    return settings, con


def _shown(con: duckdb.DuckDBPyConnection, lo: str, hi: str) -> pl.DataFrame:
    """(user, item, clicked) of the impressions between the two split cuts."""
    return con.execute(
        f"""
        SELECT i.user_id, i.item_id, bool_or(c.event_id IS NOT NULL) AS clicked
        FROM events i CROSS JOIN split_v1_spec s
        LEFT JOIN (SELECT * FROM events WHERE event_type = 'click') c
             ON c.request_id = i.request_id AND c.item_id = i.item_id
        WHERE i.event_type = 'impression' AND i.ts >= {lo} AND i.ts < {hi}
        GROUP BY ALL
        """
    ).pl()


def test_shown_items_of_the_label_window_form_served_groups(
    mind_store: tuple[Settings, duckdb.DuckDBPyConnection],
) -> None:
    settings, con = mind_store
    frame, _ = dataset.build_frame(con, settings, dataset.FIT, text_index=None)
    users = set(frame["user_id"].unique().to_list())
    shown = _shown(con, "s.val_start", "s.test_start").filter(pl.col("user_id").is_in(users))
    served = frame.filter(pl.col(SERVED))
    # a served group per user: exactly the items shown to the user in the window
    assert sorted(served.select("user_id", "item_id").unique().rows()) == sorted(
        shown.select("user_id", "item_id").unique().rows()
    )
    # shown-not-clicked items are labelled 0 unless clicked in another list of the window
    clicked_any = shown.group_by("user_id", "item_id").agg(pl.col("clicked").any())
    got = served.join(clicked_any, on=["user_id", "item_id"])
    assert got.filter(~pl.col("clicked"))["label"].max() == 0
    assert got.filter(pl.col("clicked"))["label"].min() == 1
    # items no generator proposed: dense scores, no ranks
    outside = served.filter(pl.col("blend_rank").is_null())
    assert outside.height > 0
    assert outside["gen_popularity_rank"].null_count() == outside.height
    assert outside["gen_popularity_score"].null_count() == 0
    # the candidate groups are those built without served groups, row for row
    off = settings.replace(**{"ranker.served_negatives": False})
    plain, _ = dataset.build_frame(con, off, dataset.FIT, text_index=None)
    cands = frame.filter(~pl.col(SERVED)).drop(SERVED)
    assert cands.equals(plain.select(cands.columns))
    assert SERVED not in plain.columns
    # groups are contiguous: each user's candidate group, then their served group
    keys = frame.select("user_id", SERVED).unique(maintain_order=True)
    assert keys.height == frame.select("user_id", SERVED).n_unique()


def test_no_test_period_impression_becomes_a_training_row(
    mind_store: tuple[Settings, duckdb.DuckDBPyConnection],
) -> None:
    settings, con = mind_store
    frame, _ = dataset.build_frame(con, settings, dataset.FIT, text_index=None)
    test_only = _shown(con, "s.test_start", "TIMESTAMP '2100-01-01'").join(
        _shown(con, "s.val_start", "s.test_start"), on=["user_id", "item_id"], how="anti"
    )
    assert test_only.height > 0
    leaked = test_only.join(frame.filter(pl.col(SERVED)), on=["user_id", "item_id"])
    assert leaked.height == 0


def test_candidate_recall_and_holdout_ignore_served_groups(
    mind_store: tuple[Settings, duckdb.DuckDBPyConnection],
) -> None:
    settings, con = mind_store
    frame, _ = dataset.build_frame(con, settings, dataset.FIT, text_index=None)
    truth = dataset.positives(con, "val")
    cands = dataset.candidate_rows(frame)
    assert cands.height < frame.height and not cands[SERVED].any()
    assert dataset.candidate_recall(frame, truth) == dataset.candidate_recall(cands, truth)
    assert dataset.candidate_recall(frame, truth) < dataset.candidate_recall(
        frame.drop(SERVED), truth
    )


def test_item_frame_scores_any_item_like_an_unproposed_candidate(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"home": str(tmp_path / "home")})
    con = connect(settings.db_path)
    ingest_mind(con, write_mind(tmp_path / "mind", n_users=4, n_items=12), progress=False)
    pop = Popularity()
    blender = Blender([pop], n=2).fit(Interactions.from_store(con, "events"))
    frame = blender.frame(["U0"])
    some = blender.item_frame(["U0"], [["N0", "N5", "nope"]])
    assert some.columns == frame.columns and some.schema == frame.schema
    counts, index = pop.counts, pop.data.item_index
    assert some["gen_popularity_score"].to_list()[:2] == [counts[index["N0"]], counts[index["N5"]]]
    assert some["gen_popularity_score"][2] is None  # an item the log does not know
    assert some["blend_rank"].null_count() == 3
    con.close()


def test_served_negatives_can_be_turned_off(
    mind_store: tuple[Settings, duckdb.DuckDBPyConnection],
) -> None:
    settings, con = mind_store
    off = settings.replace(**{"ranker.served_negatives": False})
    frame, _ = dataset.build_frame(con, off, dataset.FIT, text_index=None)
    assert frame["blend_rank"].null_count() == 0 and SERVED not in frame.columns
    assert group_columns(frame) == ["user_id"]


def test_the_served_groups_built_on_a_dask_cluster_equal_the_embedded(
    mind_store: tuple[Settings, duckdb.DuckDBPyConnection],
) -> None:
    """The served items are read once by the job and shipped with each chunk (the workers
    never open the store): the same frame as the embedded build, chunk by chunk."""
    settings, con = mind_store
    chunked = settings.replace(**{"ranker.frame_chunk_users": 3})
    want, _ = dataset.build_frame(con, chunked, dataset.FIT, text_index=None)
    with local_client() as client:
        got, _ = dataset.build_frame(con, chunked, dataset.FIT, text_index=None, client=client)
    assert want[SERVED].sum() > 0
    assert_frame_equal(got, want, check_exact=True)
