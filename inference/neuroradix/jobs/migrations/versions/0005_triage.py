"""Triage: one row per study with its current decision, the outbox of notifications, the audit trail.

Revision ID: 0005
Revises: 0004
``triage_studies`` holds each study's current triage level and decision (JSON), the label last put
on it in the PACS, and who acknowledged it. ``triage_deliveries`` is the outbox: one row per
(study, decision, destination), written in the same transaction as the decision, with a stable
``delivery_id`` that the receiver sees on every retry. ``triage_events`` is the append-only audit
trail (received, decided, labelled, each delivery attempt, acknowledged).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "triage_studies",
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("decision", sa.Text, nullable=False, server_default="{}"),
        sa.Column("decision_seq", sa.Integer, nullable=False, server_default="0"),
        # The job outcome the decision was made from (its id and finished_at): a job that ends again
        # (a rerun, late slices) after the decision is decided again.
        sa.Column("decided_job_id", sa.Integer),
        sa.Column("decided_job_finished_at", sa.DateTime(timezone=True)),
        sa.Column("label_wanted", sa.String(32)),
        sa.Column("label_applied", sa.String(32)),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
        sa.Column("labelled_at", sa.DateTime(timezone=True)),
        sa.Column("acknowledged_by", sa.String(100)),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
        sa.Column("escalated_at", sa.DateTime(timezone=True)),
        sa.Column("max_wait_notified_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_triage_studies_level", "triage_studies", ["level"])
    op.create_table(
        "triage_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.String(64), nullable=False, unique=True),
        sa.Column("study_uid", sa.String(64), nullable=False, index=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("last_detail", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_triage_deliveries_due", "triage_deliveries", ["state", "next_attempt_at"])
    op.create_table(
        "triage_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_uid", sa.String(64), nullable=False, index=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    )


def downgrade() -> None:
    op.drop_table("triage_events")
    op.drop_index("ix_triage_deliveries_due", table_name="triage_deliveries")
    op.drop_table("triage_deliveries")
    op.drop_index("ix_triage_studies_level", table_name="triage_studies")
    op.drop_table("triage_studies")
