"""``neuroradix weights ...``: make and verify weights releases (registered by the lead's CLI)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neuroradix.errors import NotConfiguredError, WeightsError
from neuroradix.weights import load_release, make_test_release

__all__ = ["register"]


def _make_test_release(args: argparse.Namespace) -> int:
    out = make_test_release(args.out, seed=args.seed)
    print(f"wrote an UNTRAINED test release (random weights) to {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        rel = load_release(args.dir, allow_untrained=True)
    except WeightsError as exc:
        print(f"INVALID: {exc}")
        return 1
    except NotConfiguredError as exc:  # pragma: no cover - allow_untrained=True above
        print(f"REFUSED: {exc}")
        return 1
    summary = {
        "path": str(rel.path),
        "name": rel.name,
        "version": rel.version,
        "untrained": rel.untrained,
        "licence": rel.manifest.get("licence"),
        "files": sorted(rel.manifest["files"]),
    }
    print(json.dumps(summary, indent=2))
    if rel.untrained:
        print("NOTE: this release is UNTRAINED (random weights): the node refuses it without --allow-untrained")
    return 0


def register(subparsers) -> None:
    """Add ``weights make-test-release --out DIR`` and ``weights verify DIR``."""
    p = subparsers.add_parser("weights", help="make or verify a model weights release")
    sub = p.add_subparsers(dest="weights_command", required=True)
    mk = sub.add_parser("make-test-release", help="write a tiny random release, marked untrained")
    mk.add_argument("--out", type=Path, required=True, help="folder to write")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=_make_test_release)
    ver = sub.add_parser("verify", help="check a release's manifest, hashes and config")
    ver.add_argument("dir", type=Path)
    ver.set_defaults(func=_verify)
