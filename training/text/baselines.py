"""Baselines the fine-tuned text model must beat on the same validation set.

- TF-IDF content profile (``recsys.algorithms.tfidf``, the same implementation as the ``tfidf``
  system of the full-ranking report): TF-IDF fitted on the catalog's item texts; the user is the
  recency-weighted mean of the vectors of the items they liked in the fit period; candidates are
  scored by the damped cosine of that module.
- Zero-shot MiniLM (the base checkpoint without fine-tuning) is evaluated by ``train.py`` with
  the same ``evaluate_encoder`` as the fine-tuned model.
"""

from __future__ import annotations

from collections.abc import Mapping

from recsys.algorithms.tfidf import fit_item_vectors, profiles
from training.text.evaluate import EvalSet, metrics_from_vectors


def tfidf_metrics(
    eval_set: EvalSet, item_text: Mapping[str, str], prefix: str = "tfidf_val_"
) -> dict[str, float]:
    """AUC / NDCG@10 of the TF-IDF content profile on the validation set."""
    catalog = sorted(item_text)
    row = {i: k for k, i in enumerate(catalog)}
    items = fit_item_vectors([item_text[i] for i in catalog])
    histories = [[row[i] for i in hist if i in row] for hist in eval_set.histories]
    if len(histories) != len(eval_set):
        raise ValueError("the validation set has no liked-item histories (build_eval_set)")
    user_vecs = profiles(items.unit, histories)
    return metrics_from_vectors(eval_set, user_vecs, items.scoring_matrix(), row, prefix)
