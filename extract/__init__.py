"""Extraction: run heavy unimodal teachers once over a dataset's segments into the cache."""
