"""The ``ackwal`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import uvloop

from service import __version__
from service.app import run_service
from service.build import describe as describe_build
from service.logs import configure_logging
from service.replication.promote import PromoteError, promote
from service.settings import SPECS, SettingsError, load_settings
from service.tools import ToolParser, register_tools
from wal import WalError

EXIT_USAGE = 2


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--data-dir", dest="data_dir", help="WAL directory (ACKWAL_DATA_DIR)")
    parser.add_argument(
        "--socket", dest="socket_path", help="Unix socket path (ACKWAL_SOCKET_PATH)"
    )
    parser.add_argument(
        "--metrics-addr", dest="metrics_addr", help="HOST:PORT for /metrics (ACKWAL_METRICS_ADDR)"
    )
    parser.add_argument("--log-format", dest="log_format", choices=["auto", "json", "console"])
    parser.add_argument("--log-level", dest="log_level")
    parser.add_argument("--sync-mode", dest="sync_mode", help="fdatasync | fsync | none (UNSAFE)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting, e.g. --set queue_capacity=100000 (repeatable)",
    )


def _flags(args: argparse.Namespace) -> dict[str, object]:
    flags: dict[str, object] = {
        key: getattr(args, key)
        for key in (
            "data_dir",
            "socket_path",
            "metrics_addr",
            "log_format",
            "log_level",
            "sync_mode",
        )
    }
    if getattr(args, "read_only", None):
        flags["read_only"] = True
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(f"--set expects KEY=VALUE, got {item!r}")
        flags[key.strip().replace("-", "_").replace(".", "_")] = value
    return flags


def _name_and_build() -> str:
    """``ackwal 0.1.0 (mypyc-compiled: 11 modules)``: for --version and the start-up line."""
    return f"ackwal {__version__} ({describe_build()})"


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, flags=_flags(args))
    configure_logging(settings.log_format, settings.log_level)
    print(f"{_name_and_build()}: serving on {settings.socket_path}", file=sys.stderr, flush=True)
    return run_service(settings)


def cmd_follow(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, flags=_flags(args))
    configure_logging(settings.log_format, settings.log_level)
    print(
        f"{_name_and_build()}: standby following {settings.replication_nats_url}, "
        f"serving reads on {settings.socket_path}",
        file=sys.stderr,
        flush=True,
    )
    return run_service(settings, standby=True)


def cmd_promote(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, flags=_flags(args))
    configure_logging(settings.log_format, settings.log_level)
    try:
        promoted = uvloop.run(promote(settings, list(args.journal or []), args.timeout))
    except (PromoteError, WalError, OSError, ValueError) as exc:
        print(f"ackwal promote: refused: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # NATS unreachable, timeouts: one line, not a traceback
        print(f"ackwal promote: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for p in promoted:
        print(f"promoted journal {p.journal} to epoch {p.epoch} (EPOCH record at seq {p.seq})")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, flags=_flags(args))
    rows = settings.effective()
    if args.json:
        print(json.dumps({k: {"value": v, "source": src} for k, v, src in rows}, indent=2))
    else:
        width = max(len(k) for k, _, _ in rows)
        for key, value, source in rows:
            print(f"{key:<{width}}  {value!s:<24} ({source})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="ackwal",
        description="ackwal: a durable journal for trading engines (an ACK means on disk).",
    )
    parser.add_argument("--version", action="version", version=_name_and_build())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the journaling service",
        description="Run the service. Settings: defaults < --config file < ACKWAL_* env < flags. "
        "Exit codes: 0 clean stop; 1 refused to start (data directory locked by another "
        "process, socket in use, corruption: the log line says which); 2 bad configuration; "
        "70 halted after a disk error, or a write stuck past shutdown_timeout (restart to "
        "recover); 130 forced by a second SIGINT.",
    )
    _add_setting_flags(serve)
    serve.add_argument(
        "--read-only",
        dest="read_only",
        action="store_const",
        const=True,
        help="serve the journal for inspection and replay: reads, lookups, subscriptions; no "
        "appends (error read_only), nothing written, no lock: may run beside a writer",
    )
    serve.set_defaults(func=cmd_serve)

    follow = sub.add_parser(
        "follow",
        help="run a standby: copy every journal from NATS JetStream, serve reads",
        description="Run a standby (docs/REPLICATION.md): every configured journal is copied "
        "record for record from its JetStream stream (replication_nats_url, "
        "replication_stream_prefix) through the durable consumer replication_consumer into "
        "the journal's data directory, checking seq continuity and the CRC chain; reads, "
        "lookups and subscriptions are served read-only on the socket; appends get read_only. "
        "On a divergence the standby stops following, names the first seq that differs, keeps "
        "serving reads and reports not ready. Exit codes as for serve.",
    )
    _add_setting_flags(follow)
    follow.set_defaults(func=cmd_follow)

    prom = sub.add_parser(
        "promote",
        help="turn a stopped, caught-up standby into the primary of a new epoch",
        description="Promote a standby (docs/REPLICATION.md, failover procedure). Stop the old "
        "primary and the standby's ackwal follow first. For each journal (all, or --journal): "
        "copy the stream's remaining records, check that nothing else is being published, "
        "write an EPOCH record with the next epoch into the WAL and publish it; then start "
        "ackwal serve on this configuration. Exit codes: 0 promoted; 1 refused or failed (the "
        "line says why: not caught up, diverged, NATS unreachable, the old primary still "
        "publishing, directory locked by a running standby); 2 bad configuration.",
    )
    _add_setting_flags(prom)
    prom.add_argument(
        "--journal", action="append", metavar="NAME", help="promote only NAME (repeatable)"
    )
    prom.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds allowed to copy the stream's remaining records (default 60)",
    )
    prom.set_defaults(func=cmd_promote)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser(
        "show",
        help="print the effective configuration and where each value came from",
        description="Print every setting ("
        + ", ".join(s.key for s in SPECS)
        + ") with its effective value and source.",
    )
    _add_setting_flags(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_config_show)
    register_tools(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"ackwal: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
