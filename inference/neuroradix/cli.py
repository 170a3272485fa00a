"""``neuroradix``: one command line for the node, standalone analysis, weights and training."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from neuroradix.analyzers.registry import ANALYZER_NAMES, build_analyzers
from neuroradix.config import LogFormat, LoggingSettings, PipelineSettings, SegType, load_settings, load_worker_settings
from neuroradix.deploy.launcher import down, dump_status, up
from neuroradix.devtools.demo import run_demo
from neuroradix.errors import ConfigError, NeuroRadixError
from neuroradix.jobs.ledger import Ledger
from neuroradix.jobs.metrics import JsonFormatter, multiprocess_dir, prepare_multiprocess_dir
from neuroradix.jobs.reconciler import sweep
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.pacs.orthanc_info import http_get_json, read_orthanc_info
from neuroradix.pipeline.run import process_study
from neuroradix.pipeline.sinks import FolderSink
from neuroradix.pipeline.sources import LocalSource, read_folder, read_zip
from neuroradix.runtime.sidecar import serve
from neuroradix.runtime.worker_host import run_worker, run_worker_host


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if LoggingSettings().log_format is LogFormat.JSON:  # one JSON object per line
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    for noisy in ("highdicom", "openjpeg", "pydicom", "dicomweb_client", "httpx", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_up(args: argparse.Namespace) -> int:
    try:
        config = up(args.var, ledger=args.ledger, orthanc_index=args.orthanc_index)
    except ConfigError as exc:  # no Orthanc, or one older than 1.12.11: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2
    orthanc = read_orthanc_info(http_get_json(config.orthanc_url, config.orthanc_user, config.orthanc_password))
    print(
        f"Node is up. {orthanc.summary()}\n"
        f"Orthanc {config.orthanc_url} (DICOM {config.aet}@127.0.0.1:{config.dicom_port}), "
        f"sidecar {config.sidecar_url}.\nCredentials and URLs: {args.var.resolve() / 'node.env'}"
    )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    stopped = down(args.var)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    print(dump_status(args.var))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.var)


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    prepare_multiprocess_dir(multiprocess_dir(settings.var_dir))  # the workers it starts write their metrics there
    serve(settings, args.host, args.port)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    try:
        overrides = {"device": args.device} if args.device else {}
        settings = load_worker_settings(args.env_file, **overrides)
        if args.count == 1 and args.metrics_port is None:
            run_worker(settings, args.index)
        else:  # the supervised workers read the same file and device: they get the same options
            worker_args = ["--env-file", str(args.env_file.resolve())] if args.env_file else []
            worker_args += ["--device", args.device] if args.device else []
            run_worker_host(settings, args.count, args.metrics_port, worker_args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_reconcile(_args: argparse.Namespace) -> int:
    settings = load_settings()
    pacs = PacsClient(settings.dicomweb_url, settings.orthanc_user, settings.orthanc_password.get_secret_value())
    print(f"enqueued {sweep(settings, Ledger(settings.resolved_ledger_url), pacs)} study(ies)")
    return 0


def _analyzer_names(text: str) -> tuple[str, ...]:
    """``--analyzers`` value: comma-separated names from :data:`ANALYZER_NAMES`."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ANALYZER_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown analyzer(s) {unknown or [text]}; choose from {', '.join(ANALYZER_NAMES)}"
        )
    return names


def _cmd_analyze(args: argparse.Namespace) -> int:
    if args.weights and "deep" not in (args.analyzers or ()):
        print(
            "error: --weights is for the deep-learning analyzer, which would not run: "
            "add it with --analyzers deep (or --analyzers lung-hu,deep)",
            file=sys.stderr,
        )
        return 2
    overrides: dict = {}
    if args.analyzers:
        overrides["analyzers"] = args.analyzers
    if args.weights:
        overrides["weights_dir"] = args.weights
    if args.allow_untrained:
        overrides["allow_untrained"] = True
    if args.seg_type:
        overrides["seg_type"] = args.seg_type
    settings = PipelineSettings(**overrides)
    sink = FolderSink(args.out)
    try:
        source = Path(args.input)
        if source.is_file():
            datasets = read_zip(source, settings.max_upload_expanded_bytes, max_ratio=settings.max_zip_member_ratio)
        else:
            datasets = read_folder(source)
        outcome = process_study(LocalSource(datasets, release_pixels=True), [sink], settings, build_analyzers(settings))
    except NeuroRadixError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for path in sink.written:
        print(path)
    print(json.dumps({a.name: a.status for a in outcome.analyzers}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuroradix", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, func, text in (
        ("up", _cmd_up, "start Orthanc and the sidecar in the background; write var/node.env"),
        ("down", _cmd_down, "stop what 'up' started"),
        ("status", _cmd_status, "show whether the node runs"),
        ("demo", _cmd_demo, "start the node, send the sample CT, print the results"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--var", type=Path, default=Path("var"), help="state directory (default ./var)")
        p.set_defaults(func=func)
        if name == "up":
            p.add_argument(
                "--ledger",
                choices=("", "sqlite", "postgresql"),
                default="",
                help="postgresql: a local cluster in VAR/postgres (default: NEURORADIX_LEDGER_URL, else as before)",
            )
            p.add_argument("--orthanc-index", choices=("sqlite", "postgresql"), default="sqlite")

    p = sub.add_parser("serve", help="run the sidecar (API + workers) in the foreground")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("worker", help="run worker processes only (no API, no reconciler): join a node's queue")
    p.add_argument("--env-file", type=Path, help="KEY=VALUE settings, e.g. var/worker.env (set variables win)")
    p.add_argument("--device", help="torch device of the deep analyzer: cpu, cuda, cuda:N (default auto)")
    p.add_argument("--count", type=int, default=1, help="worker processes on this host (default 1)")
    p.add_argument("--metrics-port", type=int, help="serve these workers' Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)  # set by the parent process
    p.set_defaults(func=_cmd_worker)
    sub.add_parser("reconcile", help="one reconciler sweep").set_defaults(func=_cmd_reconcile)

    p = sub.add_parser("analyze", help="analyze a folder or zip of DICOM files without a PACS")
    p.add_argument("input", help="folder of DICOM files, or a zip of them (one study)")
    p.add_argument("--out", type=Path, required=True, help="output folder (DICOM objects, results.json, labels)")
    p.add_argument(
        "--analyzers", type=_analyzer_names, help=f"comma-separated, from {', '.join(ANALYZER_NAMES)} (default lung-hu)"
    )
    p.add_argument("--weights", type=Path, help="weights release folder for the deep analyzer (needs --analyzers deep)")
    p.add_argument("--allow-untrained", action="store_true", help="TEST ONLY: run an untrained release")
    p.add_argument("--seg-type", choices=[t.value for t in SegType])
    p.set_defaults(func=_cmd_analyze)

    for module in (
        "neuroradix.models.cli",
        "neuroradix.devtools.viewer",
        "neuroradix.deploy.senders",
        "neuroradix.triage.cli",
        "neuroradix.notify.cli",
        "neuroradix.jobs.outbox_cli",
        "neuroradix_train.cli",
    ):
        try:
            register = __import__(module, fromlist=["register"]).register
        except ModuleNotFoundError as exc:  # that part is not installed; anything else is a bug
            if exc.name is None or not module.startswith(exc.name):
                raise
            continue
        register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
