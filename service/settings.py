"""One typed settings object, layered: defaults < TOML file < environment (``ACKWAL_*``) < flags.

Every value is validated at start; an invalid one is rejected with a message naming the key,
the value, where it came from and what is allowed. ``origin`` remembers where each effective
value came from (``ackwal config show``).
"""

from __future__ import annotations

import dataclasses
import grp
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

ENV_PREFIX: Final = "ACKWAL_"

Source = Literal["default", "file", "env", "flag"]


class SettingsError(ValueError):
    """An invalid configuration value; the message says key, value, source and what is allowed."""


@dataclass(frozen=True, slots=True)
class Spec:
    key: str
    kind: type
    default: Any
    doc: str
    unit: str = ""
    check: Callable[[Any], str | None] | None = None  # returns what is allowed, when violated


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _range(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if lo <= value <= hi else f"a value from {_num(lo)} to {_num(hi)}"

    return check


def _choice(*options: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in options else "one of " + ", ".join(options)

    return check


def _octal_mode(value: Any) -> str | None:
    try:
        mode = int(str(value), 8)
    except ValueError:
        return "an octal file mode such as 0660"
    return None if 0 <= mode <= 0o777 else "an octal file mode from 0000 to 0777"


def _group(value: Any) -> str | None:
    text = str(value).strip()
    if text == "" or text.isdigit():
        return None
    try:
        grp.getgrnam(text)
    except KeyError:
        return "an existing group name, a numeric gid, or an empty string"
    return None


def parse_uids(value: str) -> frozenset[int]:
    """The uids of an ``allowed_uids`` value ("1000, 1001"); empty: no restriction."""
    return frozenset(int(part) for part in value.split(",") if part.strip())


def _uid_list(value: Any) -> str | None:
    try:
        parse_uids(str(value))
    except ValueError:
        return "comma-separated integer uids, or an empty string to allow anyone"
    return None


def parse_type_list(value: str) -> frozenset[str]:
    """The event types of a ``critical_event_types`` value ("OrderFilled, Trade")."""
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def _type_list(value: Any) -> str | None:
    if any(not part.strip() for part in str(value).split(",")) and str(value).strip():
        return "comma-separated event type names (no empty items), or an empty string"
    return None


JOURNAL_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def parse_journals(raw: Any) -> dict[str, str]:
    """Extra journals, name -> data directory, from a TOML table (``[journals.NAME]`` with
    ``data_dir``) or a string ``"NAME=DIR,NAME=DIR"`` (environment, flags). Raises ValueError."""
    out: dict[str, str] = {}
    if isinstance(raw, str):
        for part in raw.split(","):
            if not part.strip():
                continue
            name, sep, directory = part.partition("=")
            if not sep:
                raise ValueError(f"{part.strip()!r} is not NAME=DIR")
            out[name.strip()] = directory.strip()
    elif isinstance(raw, Mapping):
        for name, table in raw.items():
            if isinstance(table, str):
                out[str(name)] = table
            elif isinstance(table, Mapping) and set(table) == {"data_dir"}:
                out[str(name)] = str(table["data_dir"])
            else:
                raise ValueError(f"journals.{name} must be a table holding only data_dir")
    else:
        raise ValueError("not a table")
    for name, directory in out.items():
        if not JOURNAL_NAME_RE.match(name):
            raise ValueError(f"journal name {name!r} is not 1-64 of A-Z a-z 0-9 _ -")
        if name == "main":
            raise ValueError("journal 'main' is configured by data_dir, not in journals")
        if not directory:
            raise ValueError(f"journal {name} has an empty data_dir")
    return out


def _journals(value: Any) -> str | None:
    try:
        parse_journals(value)
    except ValueError as exc:
        return f"[journals.NAME] tables with a data_dir, or NAME=DIR,NAME=DIR ({exc})"
    return None


def _nonempty(value: Any) -> str | None:
    return None if str(value).strip() else "a non-empty path"


def _stream_prefix(value: Any) -> str | None:
    ok = re.fullmatch(r"[A-Za-z0-9_-]{1,32}", str(value))
    return None if ok else "1-32 of A-Z a-z 0-9 _ - (a NATS subject token and stream name)"


def _consumer(value: Any) -> str | None:
    ok = re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(value))
    return None if ok else "1-64 of A-Z a-z 0-9 _ -"


def _addr(value: Any) -> str | None:
    if value == "":
        return None
    _host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        return "HOST:PORT (port 0-65535), or an empty string to disable"
    return None


MiB: Final = 1024 * 1024

SPECS: Final[tuple[Spec, ...]] = (
    Spec(
        "data_dir",
        str,
        "./data",
        "Directory of the journal's WAL segments (one owner).",
        check=_nonempty,
    ),
    Spec(
        "socket_path", str, "./run/ackwal.sock", "Unix socket engines connect to.", check=_nonempty
    ),
    Spec("socket_mode", str, "0660", "File mode of the socket (octal).", check=_octal_mode),
    Spec(
        "socket_group",
        str,
        "",
        "Group owning the socket (name or numeric gid); empty keeps the server's group.",
        check=_group,
    ),
    Spec(
        "allowed_uids",
        str,
        "",
        "Comma-separated peer uids allowed to connect (SO_PEERCRED); empty allows anyone "
        "who can open the socket.",
        check=_uid_list,
    ),
    Spec(
        "metrics_addr",
        str,
        "127.0.0.1:9464",
        "HOST:PORT of the metrics/health HTTP endpoint; empty disables it.",
        check=_addr,
    ),
    Spec(
        "log_format",
        str,
        "auto",
        "auto (console on a terminal, JSON otherwise), json or console.",
        check=_choice("auto", "json", "console"),
    ),
    Spec(
        "log_level",
        str,
        "info",
        "Minimum log level.",
        check=_choice("debug", "info", "warning", "error", "critical"),
    ),
    Spec(
        "max_connections",
        int,
        1024,
        "Concurrent client connections; more are refused with 'busy'.",
        check=_range(1, 1_000_000),
    ),
    Spec(
        "max_frame_bytes",
        int,
        8 * MiB,
        "Largest request frame accepted.",
        "bytes",
        _range(1024, 1024 * MiB),
    ),
    Spec(
        "max_inflight_per_connection",
        int,
        4096,
        "Unanswered requests per connection before its reads pause.",
        check=_range(1, 1_000_000),
    ),
    Spec(
        "write_timeout",
        float,
        30.0,
        "How long a client may leave replies unread (buffer full) before it is disconnected.",
        "seconds",
        _range(0.1, 86400),
    ),
    Spec(
        "shutdown_timeout",
        float,
        10.0,
        "Graceful shutdown waits this long for in-flight work.",
        "seconds",
        _range(0, 3600),
    ),
    Spec(
        "queue_capacity",
        int,
        65536,
        "Entries waiting for the batcher; when full, appends wait (backpressure).",
        "entries",
        _range(1, 100_000_000),
    ),
    Spec(
        "max_batch_entries",
        int,
        1024,
        "Most entries written by one write + fdatasync (an append_batch is never split). "
        "Smaller batches keep the writer and the event loop busy at the same time: at 64 "
        "clients x 64-entry append_batch, 1024 measured 1.3-1.5x the throughput of 4096.",
        "entries",
        _range(1, 1_000_000),
    ),
    Spec(
        "max_batch_bytes",
        int,
        8 * MiB,
        "Most payload bytes in one batch.",
        "bytes",
        _range(1024, 1024 * MiB),
    ),
    Spec(
        "max_batch_latency",
        float,
        0.0,
        "Extra time the batcher waits to fill a batch (0: group commit only).",
        "seconds",
        _range(0, 1),
    ),
    Spec(
        "halt_threshold",
        float,
        30.0,
        "Queue full and no batch completed for this long: fail stop.",
        "seconds",
        _range(0.1, 86400),
    ),
    Spec(
        "exit_on_halt",
        bool,
        True,
        "Exit non-zero after a fail-stop so a supervisor restarts into recovery.",
    ),
    Spec(
        "idempotency_window",
        float,
        86400.0,
        "Request ids are remembered this long; older ones count as new.",
        "seconds",
        _range(0, 365 * 86400),
    ),
    Spec(
        "idempotency_max_entries",
        int,
        5_000_000,
        "Most request ids remembered (oldest forgotten first).",
        "entries",
        _range(0, 1_000_000_000),
    ),
    Spec(
        "sync_mode",
        str,
        "fdatasync",
        "fdatasync (default), fsync, or none (UNSAFE: tests/benchmarks only).",
        check=_choice("fdatasync", "fsync", "none"),
    ),
    Spec(
        "segment_size",
        int,
        64 * MiB,
        "WAL segment size; a new segment is cut beyond it.",
        "bytes",
        _range(64 * 1024, 16 * 1024 * MiB),
    ),
    Spec(
        "max_record_size", int, 4 * MiB, "Largest encoded entry.", "bytes", _range(1024, 1024 * MiB)
    ),
    Spec("preallocate", bool, True, "Zero-fill segments ahead of time (faster fdatasync on ext4)."),
    Spec(
        "read_only",
        bool,
        False,
        "Serve the journal for inspection and replay only: no appends, no cursor moves, "
        "nothing written to the data directory, no lock taken (ackwal serve --read-only).",
    ),
    Spec(
        "run_started_timeout",
        float,
        10.0,
        "The start fails if this run's run_started record is not durable within this time.",
        "seconds",
        _range(0.1, 3600),
    ),
    Spec(
        "event_persistence",
        str,
        "full",
        "What an entry's events keep in the WAL: full (as sent), summary (type and key only) "
        "or none; subscribers receive what was stored.",
        check=_choice("full", "summary", "none"),
    ),
    Spec(
        "critical_event_types",
        str,
        "",
        "Comma-separated event types always stored in full, whatever event_persistence says.",
        check=_type_list,
    ),
    Spec(
        "snapshot_keep",
        int,
        3,
        "Snapshots kept in DATA_DIR/snapshots (newest first); older ones are deleted.",
        "snapshots",
        _range(1, 1000),
    ),
    Spec(
        "retention",
        str,
        "full",
        "full (keep every segment), keep_last_segments (the newest retention_segments), or "
        "snapshot_anchored (delete segments wholly below the newest snapshot's anchor).",
        check=_choice("full", "keep_last_segments", "snapshot_anchored"),
    ),
    Spec(
        "retention_segments",
        int,
        16,
        "Segments kept by retention = keep_last_segments.",
        "segments",
        _range(1, 1_000_000),
    ),
    Spec(
        "retention_interval",
        float,
        60.0,
        "How often the retention task looks for segments to delete.",
        "seconds",
        _range(0.05, 86400),
    ),
    Spec(
        "retention_ignore_cursors",
        bool,
        False,
        "Let retention delete records a durable follower cursor has not committed yet.",
    ),
    Spec(
        "max_journal_bytes",
        int,
        0,
        "Bytes of WAL records above which appends get journal_full if retention cannot free "
        "space (0: unlimited).",
        "bytes",
        _range(0, 1 << 60),
    ),
    Spec(
        "journals",
        dict,
        {},
        "Journals besides main, each with its own WAL directory: [journals.NAME] tables with a "
        "data_dir (NAME: 1-64 of A-Z a-z 0-9 _ -); env/flag form NAME=DIR,NAME=DIR.",
        check=_journals,
    ),
    Spec(
        "replication_mode",
        str,
        "off",
        "off; async (publish committed records to JetStream after the fdatasync, never "
        "blocking appends); sync (ACK only after the fdatasync AND JetStream's ack).",
        check=_choice("off", "async", "sync"),
    ),
    Spec(
        "replication_nats_url",
        str,
        "nats://127.0.0.1:4222",
        "NATS server URL(s), comma-separated, for the publisher, ackwal follow and promote.",
        check=_nonempty,
    ),
    Spec(
        "replication_stream_prefix",
        str,
        "ackwal",
        "Journal J is published on subject PREFIX.J into the JetStream stream PREFIX_J.",
        check=_stream_prefix,
    ),
    Spec(
        "replication_stream_replicas",
        int,
        1,
        "Replicas of a stream the publisher creates (3 on a three-node NATS cluster).",
        check=_range(1, 5),
    ),
    Spec(
        "replication_duplicate_window",
        float,
        120.0,
        "JetStream de-duplication window (Nats-Msg-Id) of a stream the publisher creates.",
        "seconds",
        _range(1, 86400),
    ),
    Spec(
        "replication_sync_timeout",
        float,
        5.0,
        "sync mode: a batch whose JetStream ack has not come within this time fails stop "
        "(halted; never ACKed).",
        "seconds",
        _range(0.01, 3600),
    ),
    Spec(
        "replication_publish_window",
        int,
        1024,
        "Records published to JetStream before waiting for their acks.",
        "records",
        _range(1, 65536),
    ),
    Spec(
        "replication_retry_interval",
        float,
        0.5,
        "Pause before the publisher or follower retries after NATS failed.",
        "seconds",
        _range(0.01, 60),
    ),
    Spec(
        "replication_consumer",
        str,
        "standby",
        "Durable JetStream consumer name of ackwal follow (one per standby).",
        check=_consumer,
    ),
)
SPEC_BY_KEY: Final = {s.key: s for s in SPECS}


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: str = "./data"
    socket_path: str = "./run/ackwal.sock"
    socket_mode: str = "0660"
    socket_group: str = ""
    allowed_uids: str = ""
    metrics_addr: str = "127.0.0.1:9464"
    log_format: str = "auto"
    log_level: str = "info"
    max_connections: int = 1024
    max_frame_bytes: int = 8 * MiB
    max_inflight_per_connection: int = 4096
    write_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    queue_capacity: int = 65536
    max_batch_entries: int = 1024
    max_batch_bytes: int = 8 * MiB
    max_batch_latency: float = 0.0
    halt_threshold: float = 30.0
    exit_on_halt: bool = True
    idempotency_window: float = 86400.0
    idempotency_max_entries: int = 5_000_000
    sync_mode: str = "fdatasync"
    segment_size: int = 64 * MiB
    max_record_size: int = 4 * MiB
    preallocate: bool = True
    read_only: bool = False
    run_started_timeout: float = 10.0
    event_persistence: str = "full"
    critical_event_types: str = ""
    snapshot_keep: int = 3
    retention: str = "full"
    retention_segments: int = 16
    retention_interval: float = 60.0
    retention_ignore_cursors: bool = False
    max_journal_bytes: int = 0
    journals: Mapping[str, str] = field(default_factory=dict)
    replication_mode: str = "off"
    replication_nats_url: str = "nats://127.0.0.1:4222"
    replication_stream_prefix: str = "ackwal"
    replication_stream_replicas: int = 1
    replication_duplicate_window: float = 120.0
    replication_sync_timeout: float = 5.0
    replication_publish_window: int = 1024
    replication_retry_interval: float = 0.5
    replication_consumer: str = "standby"
    origin: Mapping[str, str] = field(default_factory=dict, compare=False)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def journal_dirs(self) -> dict[str, str]:
        """Every journal of the service, name -> WAL directory; ``main`` first."""
        return {"main": self.data_dir, **self.journals}

    def effective(self) -> list[tuple[str, Any, str]]:
        """(key, value, source) for every setting, in documentation order."""
        return [(s.key, getattr(self, s.key), self.origin.get(s.key, "default")) for s in SPECS]


def _coerce(spec: Spec, raw: Any, source: str) -> Any:
    """Convert ``raw`` (a TOML value or an env/flag string) to the spec's type, or raise."""

    def fail(allowed: str) -> SettingsError:
        return SettingsError(
            f"invalid setting {spec.key} = {raw!r} (from {source}): expected {allowed}"
        )

    value: Any
    if spec.kind is bool:
        if isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
            value = True
        elif isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
            value = False
        else:
            raise fail("true or false")
    elif spec.kind is int:
        if isinstance(raw, bool):
            raise fail("an integer")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str):
            try:
                value = int(raw.strip().replace("_", ""), 0)
            except ValueError:
                raise fail("an integer") from None
        else:
            raise fail("an integer")
    elif spec.kind is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise fail("a number")
        try:
            value = float(raw)
        except ValueError:
            raise fail("a number") from None
        if math.isnan(value) or math.isinf(value):
            raise fail("a number")
    elif spec.kind is dict:
        if spec.check is not None and (allowed := spec.check(raw)) is not None:
            raise fail(allowed)
        value = parse_journals(raw)
    else:
        if not isinstance(raw, str):
            raise fail("a string")
        value = raw
    if spec.check is not None:
        allowed = spec.check(value)
        if allowed is not None:
            raise fail(allowed)
    return value


SECTIONS: Final = ("replication",)


def _flatten_sections(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``[replication] mode = "sync"`` is the setting ``replication_mode``."""
    flat: dict[str, Any] = {}
    for key, raw in doc.items():
        if key in SECTIONS and isinstance(raw, Mapping):
            for sub, value in raw.items():
                flat[f"{key}_{sub}"] = value
        else:
            flat[key] = raw
    return flat


def _check_journal_dirs(settings: Settings) -> None:
    seen: dict[str, str] = {}
    for name, directory in settings.journal_dirs().items():
        path = os.path.abspath(directory)
        if path in seen:
            raise SettingsError(
                f"invalid setting journals: journals {seen[path]} and {name} share the data "
                f"directory {path}; each journal needs its own"
            )
        seen[path] = name


def load_settings(
    config_path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the effective settings from a TOML file, the environment and command-line flags."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if config_path is not None:
        try:
            with open(config_path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise SettingsError(f"config file {config_path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {config_path} is not valid TOML: {exc}") from None
        for key, raw in _flatten_sections(doc).items():
            spec = SPEC_BY_KEY.get(key)
            if spec is None:
                raise SettingsError(
                    f"unknown setting {key!r} in {config_path}; known settings: "
                    + ", ".join(SPEC_BY_KEY)
                )
            values[key] = _coerce(spec, raw, f"file {config_path}")
            origin[key] = f"file {config_path}"
    environ = os.environ if env is None else env
    for spec in SPECS:
        name = ENV_PREFIX + spec.key.upper()
        if name in environ:
            values[spec.key] = _coerce(spec, environ[name], f"environment {name}")
            origin[spec.key] = f"environment {name}"
    for key, raw in (flags or {}).items():
        if raw is None:
            continue
        spec = SPEC_BY_KEY.get(key)
        if spec is None:
            raise SettingsError(
                f"unknown setting {key!r}; known settings: " + ", ".join(SPEC_BY_KEY)
            )
        values[key] = _coerce(spec, raw, f"flag --{key.replace('_', '-')}")
        origin[key] = f"flag --{key.replace('_', '-')}"
    settings = Settings(**values, origin=origin)
    _check_journal_dirs(settings)
    if settings.max_record_size > settings.segment_size // 2:
        raise SettingsError(
            f"invalid setting max_record_size = {settings.max_record_size} "
            f"(from {origin.get('max_record_size', 'default')}): expected at most half of "
            f"segment_size ({settings.segment_size})"
        )
    return settings
