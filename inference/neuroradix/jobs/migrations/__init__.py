"""Alembic migrations of the job ledger's schema, shipped inside the package.

:func:`neuroradix.jobs.ledger.upgrade_schema` finds this folder through ``importlib.resources``
(Alembic script location ``neuroradix.jobs:migrations``) and upgrades a ledger to head whenever
one is opened. A new revision is a file in ``versions/`` written by hand: the next number as
``revision``, the current head as ``down_revision``, and the matching change to the ``jobs`` table
in ``neuroradix/jobs/ledger.py`` (``tests/jobs/test_ledger.py`` checks that the two agree).
"""
