"""Baseline: the schema ``create_all`` and the start-up column additions made before Alembic.

Revision ID: 0001
Revises:
Create Date: 2025-06-01

The tables are written out here rather than taken from the models, which will change after this
revision. :func:`schema` is also what :func:`infra.migrations.upgrade` checks a database from
before migrations against (adding what it lacks) before stamping it with this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def schema() -> sa.MetaData:
    """The four tables as of this revision: jobs, payloads, blobs, api_keys."""
    metadata = sa.MetaData()
    sa.Table(
        "jobs",
        metadata,
        sa.Column("job_id", sa.String(length=128), primary_key=True),
        sa.Column("workflow_id", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("revision", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("request_json", sa.Text(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("tier", sa.String(length=32), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("response_cache_hit", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=256), nullable=True, unique=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("owner", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("events_json", sa.Text(), nullable=True),
        sa.Index("ix_jobs_status", "status"),
        sa.Index("ix_jobs_owner", "owner"),
        sa.Index("ix_jobs_completed_at", "completed_at"),
    )
    sa.Table(
        "payloads",
        metadata,
        sa.Column("sha256", sa.String(length=64), primary_key=True),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        "blobs",
        metadata,
        sa.Column("blob_id", sa.String(length=64), primary_key=True),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        "api_keys",
        metadata,
        sa.Column("key_id", sa.String(length=32), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("scopes", sa.String(length=200), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.Column("hash_scheme", sa.String(length=32), nullable=False),
        sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True),
        sa.Column("daily_budget_usd", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    return metadata


def upgrade() -> None:
    """Create the four tables with their indexes and the unique idempotency key."""
    schema().create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    """Drop the four tables (and every row in them)."""
    schema().drop_all(op.get_bind(), checkfirst=False)
