"""Builds a ``Recommender`` from the registry and the store: the only I/O of the request path.

The champion ``ranker`` (its LightGBM text file, from the registry's one champion cache), the
text-scorer version it was trained with (a numpy ``TextIndex`` of scope ``live``), the
generators restored from the serving state published beside the ranker (memory-mapped, never
refitted here; ``training.ranker.state``) over the store's interactions, a ``FeatureSnapshot``
of those events, item titles,
users' recent positives and when their stored vectors were made.  The clock is the latest
event time in the store, so a snapshot behaves the same whether it is live or historical.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from feature_store.embeddings import user_embedding_times
from feature_store.features import FeatureSnapshot
from feature_store.features_cache import shared_state
from feature_store.interactions import Interactions, item_titles, newest_event
from recsys.algorithms.ann import VectorSearch
from recsys.algorithms.candidates import Blender, default_generators
from recsys.algorithms.ranking import TextFeatures
from recsys.algorithms.state import restore_generators
from recsys.algorithms.text_index import TextIndex
from recsys.core import rules
from recsys.core.config import Settings
from recsys.core.errors import ModelNotReadyError
from recsys.pipeline.recommender import Recommender
from training import registry
from training.ranker import state as serving_state
from training.ranker.model import RankerModel

log = logging.getLogger(__name__)


def load_recommender(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    *,
    precompute: bool = True,
    ranker: tuple[registry.ModelRef, Path] | None = None,
    alias: str = rules.CHAMPION_ALIAS,
) -> Recommender:
    """Champion ranker + its text model's index + its published generators over ``con``'s events.

    ``precompute`` builds every known user's candidates and text vector now (see
    ``PRECOMPUTE_MAX_USERS``) so that a request only looks them up.  ``ranker`` (a version
    and its local files, e.g. one serving verified) replaces the version behind ``alias``
    (default the champion).
    """
    if ranker is not None:
        ref, path = ranker
    elif alias != rules.CHAMPION_ALIAS:
        found = registry.aliased(settings, rules.RANKER_MODEL_NAME, alias)
        if found is None:
            raise ModelNotReadyError(f"no ranker version carries the alias {alias!r}")
        ref, path = found, registry.cached_download(settings, found)
    else:
        try:
            ref, path = registry.cached_champion(settings, rules.RANKER_MODEL_NAME)
        except ModelNotReadyError as exc:
            raise ModelNotReadyError(f"{exc}; run `recsys train ranker`") from exc
    model = RankerModel.load(path)
    versions = {rules.RANKER_MODEL_NAME: ref.version}
    events = rules.LIVE_SCOPE.events
    shared = settings.serving.share_feature_snapshot
    cache = Path(settings.home) / "features"
    window = settings.ranker.covisit_window_days
    # the request path's features from memory (same definitions as compute_features)
    if shared:
        data, snapshot = shared_state(con, cache, events=events, covisit_window_days=window)
    else:
        data = Interactions.from_store(con, events)
        snapshot = FeatureSnapshot.build(con, events=events, covisit_window_days=window)
    if len(data.user_ids) == 0:
        raise ModelNotReadyError("the store has no events; run `recsys ingest` first")
    text = None
    embedded_at: dict[str, datetime] = {}
    if model.uses_text:
        scope = rules.LIVE_SCOPE.name
        index = TextIndex.load(
            con,
            model_version=model.text_model_version,
            scope=scope,
            search=VectorSearch.of(settings),
        )
        text = TextFeatures(index, data)
        versions[rules.TEXT_MODEL_NAME] = str(model.text_model_version)
        embedded_at = user_embedding_times(con, index.model_version, scope)
    wanted = list(model.spec.get("generators", []))
    gens = [
        g for g in default_generators(settings, text.index if text else None) if g.name in wanted
    ]
    n = int(model.spec.get("num_candidates", settings.ranker.num_candidates))
    # the caps the ranker was trained with (none recorded: trained before the caps, uncapped)
    limits = model.spec.get("candidate_limits", {})
    # and its generator weights (none recorded: trained before them, all 1)
    weights = model.spec.get("candidate_weights", {})
    blender = Blender(gens, n=n, limits=limits, weights=weights)
    blender = _blender(blender, data, Path(path), ref.version)
    newest = newest_event(con, events)
    clock = (newest or datetime.now()) + timedelta(seconds=1)
    log.info(
        "recommender loaded: %s, %d users, %d items, clock %s",
        versions,
        len(data.user_ids),
        data.n_items,
        clock,
    )
    return Recommender(
        settings,
        model,
        data,
        blender,
        text,
        versions,
        clock,
        snapshot,
        titles=item_titles(con),
        embedded_at=embedded_at,
        precompute=precompute,
    )


def _blender(blender: Blender, data: Interactions, model_dir: Path, version: str) -> Blender:
    """Generators restored from the ranker's published serving state (memory-mapped, checksums
    verified); a ranker trained before states were published has its generators fitted here."""
    state_dir = model_dir / serving_state.STATE_DIR
    if not state_dir.is_dir():
        log.warning(
            "ranker version %s has no %s; fitting the candidate generators in this process "
            "(retrain the ranker to publish one)",
            version,
            serving_state.STATE_DIR,
        )
        return blender.fit(data)
    arrays, _ = serving_state.load_state(state_dir)
    restore_generators(blender.generators, arrays, data)
    return blender
