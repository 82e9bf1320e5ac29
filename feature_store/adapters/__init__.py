"""Source-format adapters (MovieLens, MIND-style impression logs) feeding the generic ingest."""
