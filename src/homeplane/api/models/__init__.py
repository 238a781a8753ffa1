"""Typed models (pydantic v2) of the kinds homeplane serves, with upstream defaults.

Models accept unknown fields (kept in ``model_extra``) so that loading never
fails on a newer upstream field; the loader reports each unknown field as a
warning with its path. Field names are the upstream camelCase names.
"""
