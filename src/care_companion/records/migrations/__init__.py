"""Alembic migrations of the records database (run with ``care-companion db upgrade``)."""
