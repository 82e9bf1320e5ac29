"""Model training: the text interest model, the ranker, and MLflow tracking."""
