# The fleetwatch pipeline (and simulator) image used by docker-compose.yml.
#   docker compose build fleetwatch      (or: scripts/compose.sh build fleetwatch)
# Not built on fleetwatch's CI machine, which has no Docker engine; tests/integration/test_compose.py checks what it
# can without one (the compose file renders, the files copied here exist).

# Stage 1: the wheel, built from the same files as `pip install .` and `make venv` (.dockerignore keeps the rest of
# the checkout out). dashboards/provisioning is a link to provisioning/grafana: the Grafana files are package data.
# setup.py compiles the per-reading modules with mypyc: the stage needs a C compiler (the image has Python's headers).
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md fleetwatch.example.toml ./
COPY fleetwatch ./fleetwatch
COPY collectors ./collectors
COPY flows ./flows
COPY dashboards ./dashboards
COPY provisioning/grafana ./provisioning/grafana
RUN pip wheel --no-deps --wheel-dir /wheels .

# Stage 2: the image, with that wheel installed (no sources).
FROM python:3.11-slim

# No .pyc files on a read-only layer; logs straight to `docker logs`.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# urllib3-future (from grafana-client's niquests) is built from source so it installs beside urllib3 instead of
# replacing it for the Elasticsearch and InfluxDB clients (see the Makefile).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    URLLIB3_NO_OVERRIDE=1 pip install --no-binary urllib3-future /wheels/fleetwatch-*.whl

# The compose config as the default; docker-compose.yml mounts the same file, so edits apply without a rebuild.
COPY provisioning/fleetwatch/docker.toml /etc/fleetwatch/fleetwatch.toml

# Bytewax recovery, the alert journal and dead letters live in /var/lib/fleetwatch (a volume in compose); service
# logs are read from /var/log/services. Not root: nothing here needs it (the syslog port is above 1024).
RUN useradd --system --uid 10001 --home-dir /var/lib/fleetwatch fleetwatch \
    && mkdir -p /var/lib/fleetwatch /var/log/services \
    && chown fleetwatch: /var/lib/fleetwatch
USER fleetwatch
WORKDIR /var/lib/fleetwatch
VOLUME ["/var/lib/fleetwatch"]

# 5514/udp: the syslog input of docker.toml.
EXPOSE 5514/udp

# Healthy while the pipeline writes its status file (4 times a second), is ready (MQTT subscriptions acknowledged,
# syslog sockets bound, files scanned) and has not stopped.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import json,sys,time; s=json.load(open('/tmp/status.json')); sys.exit(0 if time.time()-s['time']<30 and s.get('ready') and s.get('subscribed') and not s.get('failures') and not s.get('stopped') else 1)"]

ENTRYPOINT ["fleetwatch"]
CMD ["run", "-c", "/etc/fleetwatch/fleetwatch.toml", "--status-file", "/tmp/status.json"]
