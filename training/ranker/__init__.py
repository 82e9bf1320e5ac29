"""LightGBM LambdaRank ranker: dataset building and training."""
