"""The DuckDB feature store: schema, ingest and validation, source adapters, point-in-time features."""
