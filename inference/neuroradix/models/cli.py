"""``neuroradix weights ...``: make and verify weights releases (registered by the lead's CLI)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neuroradix.errors import NotConfiguredError, WeightsError
from neuroradix.models.release import (
    is_published_release,
    load_published_release,
    load_release,
    make_test_release,
)

__all__ = ["register"]


def _make_test_release(args: argparse.Namespace) -> int:
    out = make_test_release(args.out, seed=args.seed)
    print(f"wrote an UNTRAINED test release (random weights) to {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    if is_published_release(args.dir):
        return _verify_published(args.dir)
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


def _verify_published(path: Path) -> int:
    try:
        manifest = load_published_release(path, allow_untrained=True)
    except WeightsError as exc:
        print(f"INVALID: {exc}")
        return 1
    pub = manifest["published"]
    summary = {
        "path": str(path),
        "name": manifest["name"],
        "model": pub["model"],
        "version": manifest["version"],
        "untrained": manifest["untrained"],
        "licence": pub["licence"],
        "restriction": pub["restriction"],
        "files": sorted(manifest["files"]),
    }
    print(json.dumps(summary, indent=2))
    if manifest["untrained"]:
        print("NOTE: this release is UNTRAINED (random weights): the node refuses it without --allow-untrained")
    return 0


def _published_names() -> list[str]:
    from neuroradix.models.published import REGISTRY  # noqa: PLC0415 - the model modules load on demand

    return sorted(REGISTRY)


def _make_test_snapshot(args: argparse.Namespace) -> int:
    from neuroradix.models.published import get_spec  # noqa: PLC0415 - the model modules load on demand

    kwargs = {} if args.input_size is None else {"input_size": args.input_size}
    get_spec(args.model).make_test_snapshot(args.dir, seed=args.seed, **kwargs)
    print(f"wrote a {args.model} test snapshot (random weights, the published layout) to {args.dir}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from neuroradix.models.published import get_spec  # noqa: PLC0415 - the model modules load on demand

    spec = get_spec(args.model)
    try:
        spec.check_acceptance(args.accept_license)
        section = spec.import_release(args.source, args.out, prompts=args.prompts)
    except (WeightsError, ValueError, FileNotFoundError) as exc:
        print(f"REFUSED: {exc}")
        return 1
    print(json.dumps({k: section[k] for k in ("model", "version", "licence", "restriction", "untrained")}, indent=2))
    print(f"wrote release {args.out}" + (" (UNTRAINED - TEST OUTPUT: random weights)" if section["untrained"] else ""))
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
    names = _published_names()
    snap = sub.add_parser("make-test-snapshot", help="write a published model's download layout with random weights")
    snap.add_argument("model", choices=names)
    snap.add_argument("dir", type=Path)
    snap.add_argument("--seed", type=int, default=0)
    snap.add_argument("--input-size", type=int, help="COLIPRI only: a smaller input cube for CI (the model's is 192)")
    snap.set_defaults(func=_make_test_snapshot)
    imp = sub.add_parser("import", help="turn a downloaded published model into a verified release")
    imp.add_argument("model", choices=names)
    imp.add_argument("source", type=Path, help="the downloaded folder (see docs/models.md)")
    imp.add_argument("--out", type=Path, required=True, help="release folder to write")
    imp.add_argument("--accept-license", help="accept a licence that needs it, e.g. cc-by-nc-sa-4.0")
    imp.add_argument("--prompts", type=Path, help='JSON {"<finding>": {"positive": ..., "negative": ...}}')
    imp.set_defaults(func=_import)
