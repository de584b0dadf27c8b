"""The REST API (FastAPI): job submission, approvals, progress, catalog, health."""
