"""Baselines the fine-tuned text model must beat on the same validation set.

- TF-IDF cosine: a word/bigram TF-IDF fitted on the catalog's item texts; the user text and the
  item text are vectorized alike and scored by cosine (vectors are L2-normalized).
- Zero-shot MiniLM (the base checkpoint without fine-tuning) is evaluated by ``train.py`` with
  the same ``evaluate_encoder`` as the fine-tuned model.
"""

from __future__ import annotations

from collections.abc import Mapping

from training.text.evaluate import EvalSet, metrics_from_vectors


def tfidf_metrics(
    eval_set: EvalSet, item_text: Mapping[str, str], prefix: str = "tfidf_val_"
) -> dict[str, float]:
    """AUC / NDCG@10 of TF-IDF cosine between user text and item text."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    # min_df=2 drops one-off tokens on a real catalog; tiny catalogs keep everything.
    vectorizer = TfidfVectorizer(
        ngram_range=(1, 2),
        min_df=2 if len(item_text) >= 100 else 1,
        max_features=200_000,
        sublinear_tf=True,
        stop_words="english",
    )
    corpus = [item_text[i] for i in sorted(item_text)]
    vectorizer.fit(corpus)
    items = eval_set.item_ids
    item_vecs = vectorizer.transform([item_text.get(i, "") for i in items]).tocsr()
    user_vecs = vectorizer.transform(eval_set.user_texts).tocsr()
    return metrics_from_vectors(
        eval_set, user_vecs, item_vecs, {i: k for k, i in enumerate(items)}, prefix
    )
