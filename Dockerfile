# syntax=docker/dockerfile:1
# The mpcio image: `mpcio worker` by default (any mpcio command works: `emulator`, `deadletter`,
# `metrics-check`, ...). Build from the repository root:
#   docker build --build-arg VERSION=$(python3 -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])') -t mpcio:0.1.0 .
# README.md "Deploying" says how this file is checked without a container runtime.
FROM python:3.11-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mpcio" \
      org.opencontainers.image.description="Self-hosted mParticle to Customer.io stream forwarder" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/mpcio/bin:$PATH

# A plain (non-editable) install into its own virtualenv, every distribution pinned by
# deploy/constraints.txt (the runtime closure of pyproject.toml's pins).
WORKDIR /build
COPY pyproject.toml README.md ./
COPY deploy/constraints.txt ./deploy/constraints.txt
COPY app ./app
COPY agents ./agents
RUN python -m venv /opt/mpcio \
 && /opt/mpcio/bin/pip install --no-cache-dir --constraint deploy/constraints.txt . \
 && rm -rf /build

# The code reads schemas/, deploy/ (the dashboard for `metrics-check`) and samples/ (the demo)
# beside its packages, so they go next to the installed app/ and agents/.
COPY schemas /opt/mpcio/lib/python3.11/site-packages/schemas
COPY deploy /opt/mpcio/lib/python3.11/site-packages/deploy
COPY samples /opt/mpcio/lib/python3.11/site-packages/samples

# Non-root, no login shell, the RocksDB data directory its own (a volume in Compose and Helm).
RUN groupadd --system --gid 10001 mpcio \
 && useradd --system --uid 10001 --gid mpcio --home-dir /var/lib/mpcio --shell /usr/sbin/nologin mpcio \
 && install -d -o mpcio -g mpcio -m 0750 /var/lib/mpcio
WORKDIR /var/lib/mpcio
USER 10001:10001

ENV MPCIO_DATA_DIR=/var/lib/mpcio \
    MPCIO_WEB_HOST=0.0.0.0 \
    MPCIO_WEB_PORT=6066
EXPOSE 6066
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('MPCIO_WEB_PORT', '6066'), timeout=3)"]
ENTRYPOINT ["mpcio"]
CMD ["worker"]
