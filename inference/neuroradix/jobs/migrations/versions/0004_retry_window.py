"""Retry by time: when a job's current run of transient failures began, and how many claims it took.

Revision ID: 0004
Revises: 0003
``retrying_since`` is the time of the first transient failure (PACS down, 5xx, 401/403, partial
STOW) since the job last made progress; the worker gives up once it is older than the retry window.
A job that gave up on a transient error keeps it, which is how the reconciler finds the jobs to
queue again once the PACS answers. ``transient_attempts`` counts the claims that ended on a
transient error, so that only the others (bugs, lost workers, timeouts) count against
``max_attempts``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retrying_since", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("transient_attempts", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("transient_attempts")
        batch.drop_column("retrying_since")
