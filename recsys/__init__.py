"""recsys: personalized recommendations with text-aware ranking."""

__version__ = "0.1.0"
