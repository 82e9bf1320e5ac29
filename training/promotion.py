"""Promotion gates: a new model version becomes ``champion`` only when it earns it.

- text-scorer: it must beat the zero-shot base model and the TF-IDF content profile on the same
  validation set, and the current champion, on ``TEXT_GATE_METRIC``;
- ranker: it must beat the best baseline (popularity, item-kNN, ALS, TF-IDF) on its own
  holdout users, and the current champion, on ``RANKER_GATE_METRIC``.  Its text features must
  beat the no-text ablation first; when they do not, the training job registers the ablation
  as the candidate instead (``training.ranker.run``): text has to earn its place.

Every decision is recorded on the model's MLflow run as the tags ``promotion.decision``
(``promoted``, ``not promoted``, ``forced``) and ``promotion.reason``, and printed by the CLI.
``force`` promotes whatever the gates say (the reason keeps what they said).

One exception keeps serving alive: a ranker is promoted when the registry has no ranker
champion at all, even when it fails a gate (the reason says so), because without a champion
the API cannot answer; the next trained ranker must then pass every gate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from recsys.core.config import Settings
from recsys.core.rules import mlflow_key
from training import registry

log = logging.getLogger(__name__)

DECISION_TAG = "promotion.decision"
REASON_TAG = "promotion.reason"
TEXT_GATE_METRIC = "val_ndcg@10"
RANKER_GATE_METRIC = "val_ndcg@10"


@dataclass(frozen=True)
class Decision:
    """Whether a version is promoted, and why, in words."""

    promote: bool
    reason: str
    forced: bool = False

    @property
    def label(self) -> str:
        if self.forced:
            return "forced"
        return "promoted" if self.promote else "not promoted"


def decide(
    settings: Settings,
    ref: registry.ModelRef,
    metric: str,
    value: float,
    bars: Mapping[str, float],
    *,
    force: bool = False,
    keep_serving: bool = False,
) -> Decision:
    """Compare ``value`` (the candidate's ``metric``) with each bar and the current champion.

    ``bars`` maps a name ("zero-shot base", "TF-IDF", ...) to its value of ``metric`` on the same
    data.  ``keep_serving`` promotes a failing candidate when there is no champion at all.
    """
    failures = [
        f"{metric} {value:.4f} does not beat {name} ({bar:.4f})"
        for name, bar in bars.items()
        if not value > bar
    ]
    passed = [f"{name} ({bar:.4f})" for name, bar in bars.items() if value > bar]
    current = registry.champion(settings, ref.name)
    if current is not None and current.version != ref.version:
        old = registry.run_metric(settings, current.run_id, mlflow_key(metric))
        name = f"champion version {current.version}"
        if old is None:
            passed.append(f"{name} (no {metric} logged)")
        elif value > old:
            passed.append(f"{name} ({old:.4f})")
        else:
            failures.append(f"{metric} {value:.4f} does not beat {name} ({old:.4f})")
    if force:
        said = "; ".join(failures) if failures else "it passes every gate"
        return Decision(True, f"forced with --force ({said})", forced=True)
    if not failures:
        beaten = ", ".join(passed) if passed else "no bar to beat"
        return Decision(True, f"{metric} {value:.4f} beats {beaten}")
    if keep_serving and current is None:
        return Decision(
            True,
            "no champion yet, promoted so that serving has a model although " + "; ".join(failures),
        )
    return Decision(False, "; ".join(failures))


def apply(settings: Settings, ref: registry.ModelRef, decision: Decision) -> None:
    """Move the champion alias when promoted; record the decision on the run and the version."""
    if decision.promote:
        registry.promote(settings, ref.name, ref.version)
    c = registry.client(settings)
    reason = decision.reason[:4900]  # MLflow tag values are limited to 5,000 characters
    for key, val in ((DECISION_TAG, decision.label), (REASON_TAG, reason)):
        c.set_tag(ref.run_id, key, val)
        c.set_model_version_tag(ref.name, ref.version, key, val)
    log_fn = log.info if decision.promote and not decision.forced else log.warning
    log_fn("%s version %s %s: %s", ref.name, ref.version, decision.label, decision.reason)


def gate_text_model(
    settings: Settings,
    ref: registry.ModelRef,
    metrics: Mapping[str, float],
    *,
    promote: bool = True,
    force: bool = False,
) -> Decision:
    """Decide, apply and record the promotion of a new text-scorer version from its run's
    validation metrics (``val_*``, ``zeroshot_val_*``, ``tfidf_val_*``)."""
    if not promote:
        decision = Decision(False, "registered only (--no-promote)")
    else:
        key = TEXT_GATE_METRIC
        bars = {
            "the zero-shot base model": metrics[f"zeroshot_{key}"],
            "the TF-IDF content profile": metrics[f"tfidf_{key}"],
        }
        decision = decide(settings, ref, key, metrics[key], bars, force=force)
    apply(settings, ref, decision)
    return decision
