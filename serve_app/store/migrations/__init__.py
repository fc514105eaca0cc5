"""Alembic's migrations of the job store (both backends): env.py and versions/."""
