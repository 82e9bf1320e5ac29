"""Core layer: settings, errors and product rules. Imports nothing above it."""
