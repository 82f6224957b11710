# syntax=docker/dockerfile:1
# ackwal container image. Build: docker build -t ackwal .   Run: docker compose up (see
# docker-compose.yml). tests/test_container.py keeps this file honest without a Docker engine:
# hadolint, the entrypoint command run as a subprocess, the HEALTHCHECK run against it.

# ---- builder: every wheel, with crcmod's C extension and ackwal's mypyc-compiled modules -----------
FROM python:3.11-slim AS builder

# gcc and the libc headers build crcmod's C extension (crcmod ships only an sdist). Versions are
# not pinned: they follow the base image's Debian release, which the python:3.11-slim tag fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# mypyc (part of mypy) compiles the append path's modules to C extensions (setup.py,
# service/build.py): 13-19 % more acked appends/s at 64 clients (docs/PERFORMANCE.md, "Compiled
# modules"). The same mypy version as the dev extras, whose compiled build `make test` tests.
RUN pip install --no-cache-dir mypy==2.4.1 setuptools==80.9.0 wheel==0.45.1

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY wal ./wal
COPY service ./service

# The dependencies' wheels first (crcmod from its sdist), installed here too: mypyc type-checks
# ackwal against them. Then ackwal's own wheel, compiled. Two checks stop the build rather than
# ship slow code: ackwal's compiled modules must load from the installed wheel (-I: not from the
# sources in /src), and crcmod's C extension must import (without it crcmod silently falls back
# to pure Python, about 25x slower CRC-32C).
RUN pip wheel --no-cache-dir --wheel-dir /wheels --no-binary crcmod . \
    && rm /wheels/ackwal-*.whl \
    && pip install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl \
    && ACKWAL_MYPYC=1 pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/check \
    && /opt/check/bin/pip install --no-cache-dir --no-index --find-links /wheels /wheels/ackwal-*.whl \
    && /opt/check/bin/python -I -c "import service.build; service.build.require_compiled()" \
    && /opt/check/bin/python -c "import crcmod._crcfunext, wal.crc; print('crcmod C extension: ok')"

# ---- runtime: the wheels only, no compiler ---------------------------------------------------------
FROM python:3.11-slim

LABEL org.opencontainers.image.title="ackwal" \
      org.opencontainers.image.description="Durable journaling service for trading engines: an ACK means the entry is on disk." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed uid/gid (10001) so that engine containers sharing the socket volume can be given the
# group (socket mode 0660) and so that volume ownership survives image rebuilds.
RUN groupadd --system --gid 10001 ackwal \
    && useradd --system --uid 10001 --gid ackwal --no-create-home \
       --home-dir /var/lib/ackwal --shell /usr/sbin/nologin ackwal \
    && mkdir -p /var/lib/ackwal /run/ackwal /etc/ackwal \
    && chown ackwal:ackwal /var/lib/ackwal /run/ackwal

# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --root-user-action=ignore --no-index --find-links /wheels \
       /wheels/ackwal-*.whl \
    && python -I -c "import service.build; service.build.require_compiled()" \
    && python -c "import crcmod._crcfunext, wal.crc"

COPY config/ackwal.container.toml /etc/ackwal/ackwal.toml

# The WAL (one owner: never mount it into two ackwal containers) and the socket directory (shared
# with the engine containers).
VOLUME ["/var/lib/ackwal", "/run/ackwal"]

# /metrics, /healthz, /readyz.
EXPOSE 9464

USER 10001:10001

# Ready means: recovery finished, socket bound, not halted. curl is not in the slim image; urlopen
# raises on a 503 or a refused connection, which exits non-zero. The start period covers the
# recovery scan of a large WAL.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/readyz', timeout=4).status == 200 else 1)"]

# SIGTERM (docker stop) is a graceful shutdown: queued appends are committed and answered first.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ackwal", "serve", "--config", "/etc/ackwal/ackwal.toml"]
