"""Algorithms on arrays and frames: candidates, ranking features, metrics, baselines."""
