"""The DuckDB feature store: schema, ingest, validation, source adapters, point-in-time features."""
