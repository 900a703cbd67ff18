"""Tasador: the domain core shared by every component (settings, schema, DB, data API client)."""
