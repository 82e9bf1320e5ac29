"""Offline evaluation: protocol v1, logged-click replay, reports."""
