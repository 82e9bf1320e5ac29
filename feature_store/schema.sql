-- The store's tables.  Ids are text (MovieLens ids are written as their decimal strings).
-- Times are UTC TIMESTAMPs.  Idempotency is enforced by the ingest code with anti-joins on
-- event_id / item_id (hash joins), not by index constraints: ART indexes on 1e7 rows cost more
-- memory and time than the 2-core target allows.

CREATE TABLE IF NOT EXISTS items (
    item_id      VARCHAR NOT NULL,
    title        VARCHAR NOT NULL,
    year         INTEGER,
    description  VARCHAR,          -- overview / plot / abstract
    tagline      VARCHAR,
    keywords     VARCHAR[],
    genres       VARCHAR[],        -- categories; MovieLens genres, MIND category + subcategory
    category     VARCHAR,          -- primary category (first genre, MIND category)
    director     VARCHAR,
    actors       VARCHAR,
    tags         VARCHAR[],        -- users' free-text tags gathered per item
    url          VARCHAR,
    created_at   TIMESTAMP,
    source       VARCHAR NOT NULL,
    updated_at   TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS users (
    user_id     VARCHAR NOT NULL,
    created_at  TIMESTAMP,          -- first event seen
    source      VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS events (
    event_id     VARCHAR NOT NULL,
    user_id      VARCHAR NOT NULL,
    item_id      VARCHAR NOT NULL,
    event_type   VARCHAR NOT NULL,  -- impression, click, view, rate, like, comment, share, purchase, tag
    value        DOUBLE,            -- rating for rate events; else NULL
    text         VARCHAR,           -- comment / tag text
    ts           TIMESTAMP NOT NULL,
    request_id   VARCHAR,           -- impressions and clicks of one served list share it
    position     INTEGER,           -- 0-based position in the served list
    source       VARCHAR NOT NULL,
    batch_id     VARCHAR NOT NULL,
    recommendation_id VARCHAR      -- the served list (uuid) an impression/click came from (API)
);
-- stores made before recommendation_id existed (a no-op on new stores)
ALTER TABLE events ADD COLUMN IF NOT EXISTS recommendation_id VARCHAR;

CREATE TABLE IF NOT EXISTS quarantine (
    batch_id        VARCHAR NOT NULL,
    source          VARCHAR NOT NULL,   -- file path or 'api'
    row_number      BIGINT,             -- 1-based data row in the source (header excluded)
    column_name     VARCHAR,
    raw             VARCHAR,            -- the row as read, JSON
    reason          VARCHAR NOT NULL,
    quarantined_at  TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS ingest_batches (
    batch_id         VARCHAR NOT NULL,
    kind             VARCHAR NOT NULL,  -- events, items, movielens, mind, api
    source           VARCHAR NOT NULL,
    content_sha256   VARCHAR,
    rows_read        BIGINT NOT NULL,
    rows_written     BIGINT NOT NULL,
    rows_duplicate   BIGINT NOT NULL,
    rows_quarantined BIGINT NOT NULL,
    started_at       TIMESTAMP NOT NULL,
    finished_at      TIMESTAMP NOT NULL
);

-- Text model outputs (written by `recsys score`).
CREATE TABLE IF NOT EXISTS item_embeddings (
    item_id        VARCHAR NOT NULL,
    model_version  VARCHAR NOT NULL,
    embedding      FLOAT[] NOT NULL
);

-- scope says which events built the user text: 'fit_v1' / 'train_v1' (protocol v1 views,
-- for ranker training and evaluation) or 'live' (all events, for serving).
CREATE TABLE IF NOT EXISTS user_embeddings (
    user_id        VARCHAR NOT NULL,
    model_version  VARCHAR NOT NULL,
    scope          VARCHAR NOT NULL,
    as_of          TIMESTAMP,         -- history cut-off the user text was built from
    embedding      FLOAT[] NOT NULL
);

CREATE TABLE IF NOT EXISTS text_scores (
    user_id        VARCHAR NOT NULL,
    item_id        VARCHAR NOT NULL,
    model_version  VARCHAR NOT NULL,
    scope          VARCHAR NOT NULL,
    score          FLOAT NOT NULL
);

CREATE TABLE IF NOT EXISTS store_meta (
    key    VARCHAR NOT NULL,
    value  VARCHAR
);

-- Team-draft interleaved lists served while a challenger ranker is interleaved with the
-- champion (serving.interleave_challenger): one row per served item with the team that picked
-- it; clicks join through (recommendation_id, item_id).  Written by the event writer.
CREATE TABLE IF NOT EXISTS interleaved_items (
    recommendation_id   VARCHAR NOT NULL,
    position            INTEGER NOT NULL,   -- 0-based position in the served list
    item_id             VARCHAR NOT NULL,
    team                VARCHAR NOT NULL,   -- 'champion' or 'challenger'
    user_id             VARCHAR NOT NULL,
    served_at           TIMESTAMP NOT NULL,
    champion_version    VARCHAR NOT NULL,   -- ranker versions interleaved
    challenger_version  VARCHAR NOT NULL
);
