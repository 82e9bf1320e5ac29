"""The batch jobs on a Dask cluster give what the embedded path gives (issue 13, point 4).

A real ``distributed.LocalCluster`` runs in this process (2 workers of 1 thread) on a seeded
store built here: 160 users who each prefer one genre (tests/factories.py).

- Ranker: on one partition ``DaskLGBMRanker`` builds exactly the trees ``lightgbm.train``
  builds with the same parameters (same predictions).  On two it is data-parallel LambdaRank:
  each worker samples bins and bags its own rows and the histograms are summed over the
  network, so the trees differ and the early-stopping round moves.  Its NDCG@10 on the
  protocol's held-out test split (every user) must be within ``NDCG_TOLERANCE`` (0.05 absolute)
  of the embedded one.  Why 0.05: on stores like this one (3 data seeds x 2 seeds,
  docs/scale.md) the embedded ranker's own test NDCG@10 moves by up to 0.05 between LightGBM
  seeds 42 and 7, and embedded vs Dask differed by -0.043 to +0.030; a broken partitioning
  (groups cut or misaligned) falls towards a random order of the candidates, which both must
  beat by 0.1.
- Text scoring: the catalog encoded in item chunks on the workers equals the embedded
  encoding (``np.allclose``, atol 1e-5: the same float32 model, batches cut differently).
- A scheduler that is not there fails fast with a ``ConfigError`` naming the address.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pytest
from polars.testing import assert_frame_equal

from feature_store.db import connect
from feature_store.embeddings import read_embeddings
from feature_store.splits import materialize_protocol_split
from recsys.algorithms.ranking import feature_matrix, feature_names
from recsys.algorithms.text_index import TextIndex
from recsys.core import rules
from recsys.core.config import Settings, load_settings
from recsys.core.errors import ConfigError
from tests.dask_cluster import local_client
from tests.factories import load_into_store, make_catalog, make_events
from tests.tiny_bert import vocab_from_texts, write_tiny_bert
from training import cluster
from training.ranker import dataset
from training.ranker.distributed import DaskBoosting, early_stopping_best, user_cuts
from training.ranker.model import RankerModel
from training.ranker.train import EmbeddedBoosting, Part, fit, lgb_params, protocol_ndcg
from training.text.scoring import score_store
from training.text.texts import item_summaries, item_texts

pytestmark = pytest.mark.integration

distributed = pytest.importorskip("distributed")

N_ITEMS = 48
NDCG_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with local_client() as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, duckdb.DuckDBPyConnection]:
    settings = load_settings(
        environ={},
        overrides={
            "home": str(tmp_path_factory.mktemp("distributed") / "home"),
            "device": "cpu",
            "ranker.num_candidates": 24,
            "ranker.min_data_in_leaf": 5,
            "ranker.num_boost_round": 40,
            "ranker.early_stopping_rounds": 10,
            "ranker.num_leaves": 7,
            "ranker.early_stopping_holdout": 0.3,
            "text.score_batch_size": 4,
        },
    )
    con = connect(settings.db_path)
    load_into_store(
        con, make_catalog(N_ITEMS), make_events(n_users=160, n_items=N_ITEMS, events_per_user=24)
    )
    materialize_protocol_split(con)
    return settings, con


def test_distributed_ranker_matches_embedded_quality(
    home: tuple[Settings, duckdb.DuckDBPyConnection], client: object, tmp_path: Path
) -> None:
    settings, con = home
    frame, gens = dataset.build_frame(con, settings, dataset.FIT, text_index=None)
    truth = dataset.positives(con, "val")
    names = feature_names(gens, with_text=False)
    started = time.perf_counter()
    embedded = fit(frame, names, settings, truth, {"uses_text": False})
    embedded_s, started = time.perf_counter() - started, time.perf_counter()
    on_dask = fit(frame, names, settings, truth, {"uses_text": False}, DaskBoosting(client))
    dask_s = time.perf_counter() - started
    # the protocol's held-out test split, every user: features as of each user's test cut,
    # positives outside the candidates count as misses (recsys evaluate's view)
    test, _ = dataset.build_frame(con, settings, dataset.TEST, text_index=None)
    test_truth = dataset.positives(con, "test")
    x_test = feature_matrix(test, names)
    e, d = (protocol_ndcg(test, r.model.predict(x_test), test_truth) for r in (embedded, on_dask))
    shuffled = np.random.default_rng(0).random(test.height)
    chance = protocol_ndcg(test, shuffled, test_truth)
    print(
        f"test NDCG@10 over {test_truth['user_id'].n_unique()} users: embedded {e:.4f} "
        f"({embedded_s:.1f} s), dask {d:.4f} ({dask_s:.1f} s), random order {chance:.4f}; "
        f"early-stopping holdout: {embedded.metrics['val_ndcg@10']:.4f} vs "
        f"{on_dask.metrics['val_ndcg@10']:.4f}"
    )
    assert abs(e - d) <= NDCG_TOLERANCE
    assert min(e, d) > chance + 0.1  # both learned (a broken partitioning would not)
    assert embedded.holdout_users == on_dask.holdout_users
    assert 1 <= on_dask.metrics["best_iteration"] <= 40
    # a plain LightGBM booster: saved and loaded exactly as the embedded model
    model = RankerModel.load(on_dask.model.save(tmp_path / "dask-ranker"))
    x = feature_matrix(frame, names)
    np.testing.assert_allclose(model.predict(x), on_dask.model.predict(x), rtol=1e-6)


def test_one_partition_builds_the_embedded_trees(
    home: tuple[Settings, duckdb.DuckDBPyConnection], client: object
) -> None:
    settings, con = home
    frame, gens = dataset.build_frame(con, settings, dataset.FIT, text_index=None)
    names = feature_names(gens, with_text=False)
    part = Part(feature_matrix(frame, names), frame, names)
    params = lgb_params(settings)
    embedded = EmbeddedBoosting().refit(params, part, 10)
    one = DaskBoosting(client, partitions=1).refit(params, part, 10)
    np.testing.assert_array_equal(one.predict(part.x), embedded.predict(part.x))
    assert one.feature_name() == names


def test_user_partitions_never_split_a_user() -> None:
    sizes = np.array([3, 2, 4, 1, 5, 5])
    users = np.array(["a", "a", "b", "c", "c", "d"])  # "a" and "c" have two groups each
    cuts = user_cuts(sizes, users, 3)
    assert set(cuts.tolist()) <= {2, 3, 5} and len(cuts) >= 1
    assert user_cuts(sizes, users, 1).size == 0
    # LightGBM's early-stopping rule on a recorded curve: stop 2 rounds after the best
    assert early_stopping_best(np.array([0.1, 0.3, 0.2, 0.25, 0.9]), 2) == (2, 0.3)
    assert early_stopping_best(np.array([0.1, 0.3, 0.2, 0.25, 0.9]), 0) == (5, 0.9)


def test_distributed_scoring_gives_the_embedded_embeddings(
    home: tuple[Settings, duckdb.DuckDBPyConnection], client: object, tmp_path: Path
) -> None:
    settings, con = home
    texts = [*item_texts(con).values(), *item_summaries(con).with_overview.values()]
    model_dir = write_tiny_bert(tmp_path / "tiny-bert", vocab_from_texts(texts))
    base = settings.replace(**{"text.model": "pairs", "text.base_model": str(model_dir)})
    scheduler = client.scheduler.address  # type: ignore[attr-defined]
    on_dask = base.replace(**{"distributed.address": scheduler, "distributed.score_chunk_items": 8})
    score_store(base, con, model_dir, "embedded", ["live"], progress=False)
    summary = score_store(on_dask, con, model_dir, "dask", ["live"], progress=False)
    assert summary.items == N_ITEMS  # 6 chunks of 8 items over 2 workers
    ours = read_embeddings(con, "embedded", "live", users=False)
    theirs = read_embeddings(con, "dask", "live", users=False)
    assert list(ours.item_ids) == list(theirs.item_ids)
    assert not np.allclose(ours.item_matrix, ours.item_matrix[::-1])  # not all one vector
    np.testing.assert_allclose(theirs.item_matrix, ours.item_matrix, atol=1e-5)


@pytest.mark.timeout(60)
def test_a_bad_address_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="distributed.address must be empty"):
        load_settings(environ={"RECSYS_DISTRIBUTED__ADDRESS": "no such scheduler!"})
    settings = load_settings(
        environ={
            "RECSYS_HOME": str(tmp_path),
            "RECSYS_DISTRIBUTED__ADDRESS": "tcp://127.0.0.1:9",
            "RECSYS_DISTRIBUTED__CONNECT_TIMEOUT_SECONDS": "2",
        }
    )
    started = time.perf_counter()
    with (
        pytest.raises(ConfigError, match=r"no Dask scheduler answered at .*127\.0\.0\.1:9"),
        cluster.connect(settings),
    ):
        pass
    assert time.perf_counter() - started < 30
    with cluster.connect(settings.replace(**{"distributed.address": ""})) as none:
        assert none is None  # embedded: no client, Dask not needed


def test_recsys_train_ranker_on_the_cluster_registers_a_plain_booster(
    home: tuple[Settings, duckdb.DuckDBPyConnection], client: object
) -> None:
    from training import registry
    from training.ranker.run import train_and_log

    settings, con = home
    scheduler = client.scheduler.address  # type: ignore[attr-defined]
    on_dask = settings.replace(**{"distributed.address": scheduler})
    summary = train_and_log(on_dask, con, promote=False)
    run = registry.client(on_dask).get_run(summary["run_id"])
    # LightGBM's own record of the job: data-parallel over the two workers
    assert run.data.params["lgb.tree_learner"] == "data"
    assert run.data.params["lgb.num_machines"] == "2"
    _, path = registry.download(on_dask, rules.RANKER_MODEL_NAME, summary["version"])
    model = RankerModel.load(path)
    assert not model.uses_text and model.booster.current_iteration() >= 1


def test_frames_built_on_worker_processes_equal_the_embedded(
    home: tuple[Settings, duckdb.DuckDBPyConnection],
) -> None:
    """Candidates and features chunk by chunk on two worker *processes* (every shipped object
    pickled: the fitted generators, the text features, the feature snapshot): the frame is the
    embedded one, value for value, text features included."""
    settings, con = home
    chunked = settings.replace(**{"ranker.frame_chunk_users": 25})  # several chunks per worker
    genres = np.zeros((N_ITEMS, 6), dtype=np.float32)
    genres[np.arange(N_ITEMS), np.arange(N_ITEMS) % 6] = 1.0
    index = TextIndex("7", [f"i{k}" for k in range(N_ITEMS)], genres, scope="fit_v1")
    want, gens = dataset.build_frame(con, chunked, dataset.FIT, text_index=index)
    with local_client(processes=True) as on_processes:
        got, got_gens = dataset.build_frame(
            con, chunked, dataset.FIT, text_index=index, client=on_processes
        )
    assert got_gens == gens and "text" in gens
    assert want.height > 1000 and want["user_id"].n_unique() > 2 * 25
    assert want["text_score"].is_not_nan().sum() > 0 and want["label"].sum() > 0
    assert_frame_equal(got, want, check_exact=True)
