"""The one place serving reaches torch: the event writer's live user-vector refresh.

``training.text.scoring`` imports the text model and so torch (seconds, and hundreds of MB).
The writer needs it only once a text model is registered, and the supervising process that runs
the writer also runs ``recsys serve --help`` and starts gunicorn: importing scoring at the
writer's top made ``recsys serve --help`` take ~7 s instead of ~0.6 s.  So this module, in the
way ``recsys.core.compat`` gathers the heavy third-party libraries, imports it on first use.
The API workers import neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb

from recsys.core.config import Settings


def refresh_user_embeddings(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    model_dir: Path,
    model_version: str,
    user_ids: Sequence[str],
    scope: str,
) -> int:
    """``training.text.scoring.refresh_user_embeddings``, imported (with torch) on first call."""
    from training.text import scoring

    return scoring.refresh_user_embeddings(
        con, settings, model_dir, model_version, user_ids, scope=scope
    )
