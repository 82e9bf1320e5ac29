"""The protocol baselines on the ranker's own holdout users: the bar a new ranker must clear.

Each baseline is fitted on the fit-period events (what the ranker's features see) and ranks the
whole catalog minus the user's fit-period items; NDCG@10 counts every validation positive of
the holdout users, as ``training.ranker.train.protocol_ndcg`` does for the ranker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import duckdb
import numpy as np
import polars as pl

from feature_store.interactions import Interactions
from recsys.algorithms.baselines import ALS, ItemKNN
from recsys.algorithms.candidates import Generator, Popularity
from recsys.algorithms.metrics import ndcg_at_k
from recsys.algorithms.tfidf import TfidfProfile
from recsys.core.config import Settings
from training.text.texts import item_texts

log = logging.getLogger(__name__)

K = 10


def holdout_baselines(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    events: str,
    users: Sequence[str],
    truth: pl.DataFrame,
) -> dict[str, float]:
    """NDCG@10 of popularity, item-kNN, ALS and TF-IDF on ``users`` against ``truth``."""
    relevant: dict[str, set[str]] = {}
    for user, item in truth.filter(pl.col("user_id").is_in(list(users))).iter_rows():
        relevant.setdefault(str(user), set()).add(str(item))
    scored = [u for u in users if u in relevant]
    if not scored:
        return {}
    data = Interactions.from_store(con, events)
    texts = item_texts(con)
    systems: dict[str, Generator] = {
        "popularity": Popularity(),
        "item_knn": ItemKNN(),
        "als": ALS(seed=settings.seed),
    }
    out: dict[str, float] = {}
    if any(t.strip() for t in texts.values()):
        systems["tfidf"] = TfidfProfile(texts)
    for name, system in systems.items():
        system.fit(data)
        lists = system.generate(scored, K)
        pairs = zip(scored, lists, strict=True)
        out[name] = float(np.mean([ndcg_at_k(list(ids), relevant[u], K) for u, (ids, _) in pairs]))
    log.info(
        "baselines on the ranker's %d holdout users: %s",
        len(scored),
        {k: round(v, 4) for k, v in out.items()},
    )
    return out
