"""Alembic migrations of the job database (``env.py``, ``script.py.mako``, ``versions/``).

Applied by :func:`infra.migrations.upgrade` (``agentflow db upgrade``); new revisions are written
by ``agentflow db revision``. No ``alembic.ini``: :func:`infra.migrations.alembic_config` points
Alembic at this folder.
"""
