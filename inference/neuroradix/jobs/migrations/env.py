"""Alembic environment of the job ledger: runs on the connection the ledger hands over.

The ledger opens the transaction (and, on PostgreSQL, takes an advisory lock) before it calls
Alembic, so several processes starting at once upgrade the schema exactly once.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the ledger migrations run through neuroradix.jobs.ledger.upgrade_schema(engine)")
context.configure(connection=connection, version_table=context.config.attributes["version_table"], render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
