"""The Recommender pipeline, composed from the layers below."""
