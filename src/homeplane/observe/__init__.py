"""Observability: the admin endpoint (health, status, metrics)."""
