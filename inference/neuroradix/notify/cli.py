"""``neuroradix destinations add|list|remove``: edit ``VAR/destinations.json``.

A running node re-reads the file when it changes, so an edit applies without a restart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neuroradix.errors import ConfigError
from neuroradix.notify.destinations import (
    KINDS,
    Destination,
    DestinationStore,
    check_secret_file,
    destinations_path,
)
from neuroradix.notify.message import RANKED_LEVELS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``destinations`` to the ``neuroradix`` command line (``func=run``).

    Parameters
    ----------
    subparsers
        The top-level parser's subparsers.
    """
    parser = subparsers.add_parser(
        "destinations",
        help="list, add or remove where triage notifications go (HL7 v2 / MLLP, FHIR, webhook)",
        description="Destinations of triage notifications, kept in VAR/destinations.json (mode 0600).",
    )
    var_help = "the node's state folder (default var)"
    parser.add_argument("--var", type=Path, default=Path("var"), help=var_help)
    sub = parser.add_subparsers(dest="destinations_command", required=True)
    listing = sub.add_parser("list", help="print name, kind, URL, minimum level and secret file of each destination")
    listing.add_argument("--var", type=Path, default=argparse.SUPPRESS, help=var_help)
    add = sub.add_parser("add", help="add a destination")
    add.add_argument("name", help="identifier: 1-40 of a-z 0-9 - _")
    add.add_argument("--kind", required=True, choices=KINDS)
    add.add_argument("--url", required=True, help="mllp://host:port (hl7v2), base URL (fhir), URL (webhook)")
    add.add_argument(
        "--min-level", default="routine", choices=RANKED_LEVELS, help="lowest level sent (default routine)"
    )
    add.add_argument(
        "--secret-file",
        type=Path,
        help="file holding the secret (webhook: required, the HMAC key; fhir: optional bearer token); mode 0600",
    )
    add.add_argument("--replace", action="store_true", help="replace a destination of the same name")
    add.add_argument("--var", type=Path, default=argparse.SUPPRESS, help=var_help)
    remove = sub.add_parser("remove", help="remove a destination")
    remove.add_argument("name")
    remove.add_argument("--var", type=Path, default=argparse.SUPPRESS, help=var_help)
    parser.set_defaults(func=run)
    return parser


register = add_parser  # the name `neuroradix.cli` looks for in its sub-command modules


def run(args: argparse.Namespace) -> int:
    """Run ``neuroradix destinations ...``; returns the exit status (0 ok, 1 no such name, 2 invalid).

    Parameters
    ----------
    args
        Parsed arguments from :func:`add_parser`'s parser.
    """
    store = DestinationStore(destinations_path(args.var))
    try:
        if args.destinations_command == "list":
            for d in store.list():
                print(f"{d.name}\t{d.kind}\t{d.url}\t{d.min_level}\t{d.secret_file or '-'}")
            return 0
        if args.destinations_command == "add":
            secret = str(args.secret_file.resolve()) if args.secret_file else None
            destination = Destination(args.name, args.kind, args.url, args.min_level, secret)
            if secret is not None:
                check_secret_file(secret)
            store.add(destination, replace=args.replace)
            print(f"added {destination.name} ({destination.kind}); a running node applies it at once")
            return 0
        store.remove(args.name)
        print(f"removed {args.name}")
        return 0
    except KeyError as exc:
        print(f"neuroradix destinations: no destination called {exc.args[0]!r}", file=sys.stderr)
        return 1
    except (ValueError, ConfigError) as exc:
        print(f"neuroradix destinations: {exc}", file=sys.stderr)
        return 2
