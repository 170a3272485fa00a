"""``neuroradix triage check FILE`` and ``neuroradix triage set FILE [--var VAR]``.

``check`` validates a policy and prints ``ok: version ..., sha256 ..., N rules, mode ...`` (exit 0)
or ``FILE:LINE: reason`` on stderr (exit 2). ``set`` validates, then installs the file's exact
bytes as ``VAR/triage-policy.yaml`` (mode 0600, written to a temporary file and renamed, so a
running node's :class:`~neuroradix.triage.policy.PolicyStore` never reads half a file).

The lead's CLI wires it in with :func:`add_parser` (also exported as ``register``, the name the
other sub-command modules use) and dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from neuroradix.triage.policy import POLICY_FILENAME, PolicyError, TriagePolicy, load_policy

__all__ = ["POLICY_FILENAME", "add_parser", "install_policy", "installed_policy_path", "main", "register", "run"]

EXIT_INVALID = 2


def installed_policy_path(var: Path) -> Path:
    """Where ``triage set`` installs the policy: ``VAR/triage-policy.yaml``."""
    return Path(var) / POLICY_FILENAME


def install_policy(source: Path, var: Path) -> tuple[TriagePolicy, Path]:
    """Validate ``source`` and install its bytes atomically as ``VAR/triage-policy.yaml`` (0600).

    Parameters
    ----------
    source:
        The policy file to install.
    var:
        The node's state directory (created if missing).

    Returns
    -------
    tuple[TriagePolicy, Path]
        The validated policy (as installed) and the installed path.

    Raises
    ------
    PolicyError
        When ``source`` is not a valid policy; nothing is written then.
    """
    policy = load_policy(source)
    data = Path(source).read_bytes()
    target = installed_policy_path(var)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".triage-policy-", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    installed = load_policy(target)
    if installed.sha256 != policy.sha256:  # the file changed between validation and copy
        raise PolicyError(str(source), 1, "the file changed while it was installed; run 'triage set' again")
    return installed, target


def _summary(policy: TriagePolicy) -> str:
    return f"version {policy.version}, sha256 {policy.sha256}, {len(policy.rules)} rules, mode {policy.mode.value}"


def run(args: argparse.Namespace) -> int:
    """Run ``triage check`` or ``triage set`` from parsed arguments.

    Returns
    -------
    int
        0 on success, 2 when the policy is invalid.
    """
    try:
        if args.triage_command == "check":
            policy = load_policy(args.file)
            print(f"ok: {_summary(policy)}")
            return 0
        policy, target = install_policy(args.file, args.var)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    print(f"installed triage policy {policy.version} to {target} ({_summary(policy)})")
    return 0


def add_parser(subparsers) -> None:
    """Add ``triage check FILE`` and ``triage set FILE [--var VAR]`` to the ``neuroradix`` sub-commands."""
    _add_commands(subparsers.add_parser("triage", help="check or install the triage policy (YAML)"))


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="triage_command", required=True)
    check = sub.add_parser("check", help="validate a policy file: exit 2 with FILE:LINE: reason")
    check.add_argument("file", type=Path)
    check.set_defaults(func=run)
    install = sub.add_parser("set", help="validate and install a policy as VAR/triage-policy.yaml (0600)")
    install.add_argument("file", type=Path)
    install.add_argument("--var", type=Path, default=Path("var"), help="state directory (default ./var)")
    install.set_defaults(func=run)


register = add_parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m neuroradix.triage.cli check|set ...`` (the same as ``neuroradix triage ...``)."""
    parser = argparse.ArgumentParser(prog="neuroradix triage", description="check or install the triage policy")
    _add_commands(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
