"""Ingest: ticket exports (CSV, JSON Lines, Zendesk) read, normalised, redacted and deduplicated into the lake."""
