"""Flask HTTP serving (create_app in serving.app)."""
