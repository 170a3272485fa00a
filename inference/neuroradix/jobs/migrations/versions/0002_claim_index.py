"""Index the claim query: claimable jobs are found by (state, next_attempt_at).

Revision ID: 0002
Revises: 0001
With a backlog of thousands of studies and several workers polling, the claim's
``WHERE state = 'queued' AND next_attempt_at <= now ORDER BY next_attempt_at`` reads the index
instead of every queued row.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_claim", "jobs", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
