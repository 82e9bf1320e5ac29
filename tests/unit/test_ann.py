"""Vector indexes: exact and HNSW (faiss) give the same known top-k on tiny, well-separated data;
exclusions, empty catalogs, k past the catalog, bad dims and corrupt saved graphs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from recsys.algorithms import ann
from recsys.algorithms.ann import ExactIndex, HnswIndex, VectorSearch, vector_index
from recsys.algorithms.text_index import TextIndex
from recsys.core.config import load_settings
from recsys.core.errors import ConfigError, ModelNotReadyError

pytest.importorskip("faiss")

DIM = 16


def separated(n: int = 400, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors in 16-d: neighbours are distinct, so top-k has one answer."""
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_top(matrix: np.ndarray, q: np.ndarray, k: int, skip: set[int] = frozenset()) -> list:
    s = matrix @ q
    return [int(i) for i in np.argsort(-s) if int(i) not in skip][:k]


@pytest.fixture(params=["exact", "hnsw"])
def index_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(kind: str, matrix: np.ndarray) -> ann.VectorIndex:
    return ExactIndex(matrix) if kind == "exact" else HnswIndex(matrix)


def test_top_k_is_the_known_answer(index_kind: str) -> None:
    m = separated()
    idx = build(index_kind, m)
    queries = m[[3, 50, 123]] + 0.01 * separated(3, seed=5)
    hits = idx.search(queries, 10)
    for q, (rows, scores) in zip(queries, hits, strict=True):
        assert rows.tolist() == brute_top(m, q, 10)
        np.testing.assert_allclose(scores, m[rows] @ q, rtol=1e-5)
        assert np.all(np.diff(scores) <= 0)
    assert [r[0] for r, _ in hits] == [3, 50, 123]


def test_exclusions_are_honoured(index_kind: str) -> None:
    m = separated()
    idx = build(index_kind, m)
    q = m[7]
    skip = brute_top(m, q, 4)  # the 4 best, item 7 itself first
    (rows, _), (rows_all, _) = idx.search(np.stack([q, q]), 5, exclude=[skip, []])
    assert not set(rows.tolist()) & set(skip)
    assert rows.tolist() == brute_top(m, q, 5, set(skip))
    assert rows_all[0] == 7


def test_empty_index_and_k_past_the_catalog(index_kind: str) -> None:
    empty = build(index_kind, np.zeros((0, DIM), dtype=np.float32))
    rows, scores = empty.search(np.ones(DIM, dtype=np.float32), 5)[0]
    assert len(rows) == 0 and len(scores) == 0
    m = separated(12)
    rows, scores = build(index_kind, m).search(m[0], 50, exclude=[[1]])[0]
    assert sorted(rows.tolist()) == [r for r in range(12) if r != 1]
    assert rows.tolist() == brute_top(m, m[0], 50, {1})
    assert build(index_kind, m).search(m[0], 0)[0][0].size == 0


def test_dims_mismatch_is_a_clear_error(index_kind: str) -> None:
    idx = build(index_kind, separated(20))
    with pytest.raises(ValueError, match="16-d vectors"):
        idx.search(np.ones(8, dtype=np.float32), 3)
    with pytest.raises(ValueError, match="2 queries"):
        idx.search(np.ones((2, DIM), dtype=np.float32), 3, exclude=[[1]])


def test_saved_graph_round_trips_and_corrupt_or_stale_ones_are_refused(tmp_path: Path) -> None:
    m = separated()
    path = tmp_path / "items.faiss"
    HnswIndex(m).save(path)
    loaded = HnswIndex.load(path, m)
    assert loaded.search(m[9], 5)[0][0].tolist() == brute_top(m, m[9], 5)

    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelNotReadyError, match="index checksum"):
        HnswIndex.load(path, m)

    HnswIndex(m).save(path)
    with pytest.raises(ModelNotReadyError, match="item vectors changed"):
        HnswIndex.load(path, separated(seed=3))
    with pytest.raises(ModelNotReadyError, match="shape"):
        HnswIndex.load(path, m[:10])
    Path(f"{path}.json").write_text("{not json")
    with pytest.raises(ModelNotReadyError, match="manifest"):
        HnswIndex.load(path, m)


def test_auto_picks_hnsw_from_the_threshold_and_caches_the_graph(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = separated()
    assert isinstance(vector_index(m, VectorSearch("auto", min_items=401)), ExactIndex)
    assert isinstance(vector_index(m, VectorSearch("exact", min_items=1)), ExactIndex)
    search = VectorSearch("auto", min_items=400, cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger=ann.__name__):
        first = vector_index(m, search)
        second = vector_index(m, search)
    assert isinstance(first, HnswIndex) and isinstance(second, HnswIndex)
    assert len(list(tmp_path.glob("*.faiss"))) == 1
    assert "loaded from" in caplog.text
    # a corrupt cached graph is refused and rebuilt, never served
    saved = next(tmp_path.glob("*.faiss"))
    saved.write_bytes(b"garbage")
    third = vector_index(m, search)
    assert third.search(m[1], 3)[0][0].tolist() == brute_top(m, m[1], 3)
    assert HnswIndex.load(saved, m).n == 400


def test_missing_library_falls_back_to_exact(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ann, "faiss_module", lambda: None)
    with caplog.at_level(logging.WARNING, logger=ann.__name__):
        idx = vector_index(separated(), VectorSearch("hnsw"))
    assert isinstance(idx, ExactIndex)
    assert "faiss-cpu is not installed" in caplog.text
    with pytest.raises(ConfigError, match="faiss-cpu"):
        HnswIndex(separated())


def test_settings_choose_the_index_and_reject_unknown_kinds(tmp_path: Path) -> None:
    s = load_settings(environ={"RECSYS_HOME": str(tmp_path)})
    search = VectorSearch.of(s)
    assert (search.kind, search.min_items) == ("auto", 50_000)
    # MovieLens (9,742 items) stays exact by default: its results are unchanged
    assert not search.wants_hnsw(9_742) and search.wants_hnsw(100_000)
    with pytest.raises(ConfigError, match="vector_index"):
        load_settings(environ={"RECSYS_SERVING__VECTOR_INDEX": "annoy"})
    with pytest.raises(ConfigError, match="one of"):
        VectorSearch("annoy")


def test_text_index_nearest_and_similar_items_agree_between_indexes() -> None:
    m = separated(300)
    ids = [f"i{k:03d}" for k in range(300)]
    exact = TextIndex("1", ids, m)
    hnsw = TextIndex("1", ids, m, search=VectorSearch("hnsw"))
    assert isinstance(exact.vectors, ExactIndex) and isinstance(hnsw.vectors, HnswIndex)
    user = m[:3].mean(axis=0)
    user /= np.linalg.norm(user)
    seen = {"i000", "i001", "unknown"}
    a_ids, a_scores = exact.nearest(user, 8, exclude=seen)
    b_ids, b_scores = hnsw.nearest(user, 8, exclude=seen)
    assert a_ids.tolist() == b_ids.tolist() and not seen & set(a_ids.tolist())
    np.testing.assert_allclose(a_scores, b_scores, rtol=1e-5)
    sim_ids, _ = hnsw.similar_items("i010", 5)
    assert "i010" not in sim_ids.tolist()
    assert sim_ids.tolist() == [ids[r] for r in brute_top(m, m[10], 5, {10})]
    assert exact.similar_items("nope", 5)[0].size == 0
