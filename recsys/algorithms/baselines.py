"""Protocol baselines beside popularity (``candidates.Popularity``): item-kNN and ALS.

Both are fitted on positive interactions only (``recsys.core.rules``) and rank the whole
catalog minus what the user has seen, through the same generator protocol as the candidates.
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import datetime

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from feature_store.interactions import Interactions
from recsys.algorithms.state import Arrays, Maps, csr_arrays, csr_from
from recsys.algorithms.topk import DenseGenerator, row_sum
from recsys.core import compat

log = logging.getLogger(__name__)


class ItemKNN(DenseGenerator):
    """Item-based CF: cosine similarity on binary train positives, each item keeping its ``k``
    nearest neighbours (implicit's ``CosineRecommender``); score(u, i) = sum over u's positives
    j of sim(j, i).  Keeping 200 neighbours scores better on protocol v1 than the full matrix
    (NDCG@10 0.110 vs 0.095): the long tail of tiny similarities is mostly noise.
    """

    name = "item_knn"

    def __init__(self, k: int = 200) -> None:
        self.k = int(k)

    def fit(self, data: Interactions) -> ItemKNN:
        CosineRecommender = compat.implicit("nearest_neighbours").CosineRecommender
        ParameterWarning = compat.implicit("utils").ParameterWarning

        self.data = data
        x = data.positives.astype(bool).astype(np.float32).tocsr()
        model = CosineRecommender(K=self.k)
        with warnings.catch_warnings():
            # implicit converts its own intermediate COO matrix and warns about it
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(x, show_progress=False)
        self.similarity = sp.csr_matrix(model.similarity)
        return self

    def user_scores(self, u: int | None, as_of: datetime | None) -> np.ndarray | None:
        if u is None:
            return None
        # the user's liked items, each of weight 1 (what the 0/1 matrix fitted on holds), read
        # from the shared interactions rather than a per-process copy of the matrix
        x = self.data.positives
        scores = row_sum(self.similarity, x.indices[x.indptr[u] : x.indptr[u + 1]])
        return np.where(scores > 0, scores, -np.inf)

    def state(self) -> dict[str, np.ndarray]:
        return {f"similarity/{k}": v for k, v in csr_arrays(self.similarity).items()}

    def restore(self, arrays: Arrays, data: Interactions, maps: Maps) -> ItemKNN:
        """The published neighbour matrix; users' positives from ``data``."""
        self.data = data
        self.similarity = maps.items.square(csr_from(arrays, "similarity"))
        return self


class ALS(DenseGenerator):
    """Implicit-feedback matrix factorisation (library ``implicit``), confidence = 1 + alpha*x."""

    name = "als"

    # Tuned on protocol v1 (NDCG@10 0.119; 64 factors / alpha 10 gave 0.097).
    def __init__(
        self,
        factors: int = 32,
        regularization: float = 0.1,
        iterations: int = 15,
        alpha: float = 2.0,
        seed: int = 42,
    ) -> None:
        self.factors, self.regularization = factors, regularization
        self.iterations, self.alpha, self.seed = iterations, alpha, seed

    def fit(self, data: Interactions) -> ALS:
        # implicit warns (and is slow) when BLAS runs its own threads beside its workers.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        with threadpool_limits(limits=1, user_api="blas"):
            AlternatingLeastSquares = compat.implicit("cpu.als").AlternatingLeastSquares

            self.data = data
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                iterations=self.iterations,
                alpha=self.alpha,
                random_state=self.seed,
                calculate_training_loss=False,
            )
            x = data.positives.astype(bool).astype(np.float32).tocsr()
            model.fit(x, show_progress=False)
        self.user_factors = np.asarray(model.user_factors)
        self.item_factors = np.asarray(model.item_factors)
        return self

    def user_scores(self, u: int | None, as_of: datetime | None) -> np.ndarray | None:
        if u is None:
            return None
        row = self.user_factors[u]
        if not np.isfinite(row).all():  # a user added after the published state
            return None
        return self.item_factors @ row

    def state(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def restore(self, arrays: Arrays, data: Interactions, maps: Maps) -> ALS:
        self.data = data
        self.item_factors = maps.items.rows(arrays["item_factors"], 0.0)
        self.user_factors = maps.users.rows(arrays["user_factors"], np.nan)
        return self
