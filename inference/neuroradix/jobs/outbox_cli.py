"""``neuroradix notify list|retry``: the triage notification outbox from the command line.

Reads the ledger the node uses (``VAR/worker.env``, written by ``make up``, names it). ``list``
shows each notification's destination, kind, state, attempts and the receiver's last answer
(study UIDs as short hashes, no patient data); ``retry`` puts dead-lettered ones back in the queue
with their delivery ids unchanged, so a receiver that saw one before can tell it is the same.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neuroradix.config import load_worker_settings
from neuroradix.errors import ConfigError
from neuroradix.jobs.ledger import Ledger
from neuroradix.jobs.triage_store import DeliveryState, TriageStore
from neuroradix.uids import short_hash


def _store(args: argparse.Namespace) -> TriageStore:
    env_file = args.env_file or Path(args.var) / "worker.env"
    settings = load_worker_settings(env_file)
    return TriageStore(Ledger(settings.resolved_ledger_url))


def run(args: argparse.Namespace) -> int:
    """Run ``notify list`` or ``notify retry``; returns the exit status."""
    try:
        store = _store(args)
    except ConfigError as exc:
        print(f"error: {exc} (run 'make up' first, or pass --env-file)")
        return 2
    if args.notify_command == "list":
        state = DeliveryState(args.state) if args.state else None
        rows = store.deliveries(state=state, limit=args.limit)
        print(f"{'delivery id':38} {'study':10} {'destination':16} {'kind':10} {'state':9} {'tries':>5}  last answer")
        for d in rows:
            print(
                f"{d.delivery_id:38} {short_hash(d.study_uid):10} {d.destination:16} {d.kind:10} "
                f"{d.state.value:9} {d.attempts:>5}  {d.last_detail or ''}"
            )
        counts = store.delivery_counts()
        print("totals: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
        return 0
    retried = store.retry_dead(args.delivery_ids or None)
    print(f"queued again: {retried} dead-lettered notification(s)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``notify`` to the ``neuroradix`` command line."""
    parser = subparsers.add_parser(
        "notify",
        help="list the triage notifications, or retry dead-lettered ones",
        description="The outbox of triage notifications (HL7 v2, FHIR, webhook); see docs/triage.md.",
    )
    parser.add_argument("--var", default="var", help="the node's state folder (default var)")
    parser.add_argument("--env-file", type=Path, help="settings naming the ledger (default VAR/worker.env)")
    sub = parser.add_subparsers(dest="notify_command", required=True)
    listing = sub.add_parser("list", help="notifications, newest first")
    listing.add_argument("--state", choices=[s.value for s in DeliveryState])
    listing.add_argument("--limit", type=int, default=100)
    retry = sub.add_parser("retry", help="queue dead-lettered notifications again (all, or those named)")
    retry.add_argument("delivery_ids", nargs="*", help="delivery ids (default: every dead-lettered one)")
    parser.set_defaults(func=run)
    return parser
