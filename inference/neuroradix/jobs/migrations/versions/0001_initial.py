"""The ledger of the first release (commit 026e9dd): one ``jobs`` table.

Revision ID: 0001
Revises: none
A ledger created by that release has this schema and no version table; the ledger stamps it
``0001`` before upgrading (see ``neuroradix.jobs.ledger.upgrade_schema``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("pipeline_version", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error_class", sa.String(100)),
        sa.Column("error_message", sa.Text),
        sa.Column("timings", sa.Text, nullable=False),
        sa.Column("input_series_uid", sa.String(64)),
        sa.Column("source_fingerprint", sa.String(64)),
        sa.Column("pending_rerun", sa.Boolean, nullable=False),
        sa.Column("output_uids", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("study_uid", "pipeline_version", name="uq_job_study_version"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_jobs_state", table_name="jobs")
    op.drop_table("jobs")
