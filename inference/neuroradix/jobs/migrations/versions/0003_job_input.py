"""Jobs on an uploaded study: where a job's study comes from.

Revision ID: 0003
Revises: 0002
``source`` is ``"pacs"`` (every job before this revision) or ``"upload"`` (``POST /v1/analyze``
stored a zip of one study at ``input_path``, under the node's var directory).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="pacs"))
        batch.add_column(sa.Column("input_path", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("input_path")
        batch.drop_column("source")
