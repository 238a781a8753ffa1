"""Typed resource kinds, loading, Flux-style substitution and diagnostics."""
