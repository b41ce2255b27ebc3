# syntax=docker/dockerfile:1
#
# token-sidecar container image.
#
#   docker build -t token-sidecar:0.1.0 .
#   docker run --rm --read-only -p 127.0.0.1:9700:9700 \
#     -v "$PWD/config.toml:/etc/token-sidecar/config.toml:ro" \
#     token-sidecar:0.1.0 serve --config /etc/token-sidecar/config.toml
#
# Stage 1 builds the project's wheel (the daemon, and the client package its
# `token` command is built on) and installs it (with its dependencies
# from PyPI) into a virtual environment at /opt/token-sidecar. Stage 2 copies
# only that environment onto a fresh slim image: no compiler, no pip cache, no
# source tree, no secrets. tests/test_deploy.py repeats the commands of stage 1
# (pip wheel --no-deps, python -m venv, pip install the wheel) on the test
# machine and runs the installed command, because no Docker engine is there.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY client/token_sidecar_client ./client/token_sidecar_client
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/token-sidecar \
 && /opt/token-sidecar/bin/pip install --no-cache-dir /wheels/token_sidecar-*.whl \
 && /opt/token-sidecar/bin/token-sidecar --version

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="token-sidecar" \
      org.opencontainers.image.description="Keeps OAuth 2.0 client-credentials tokens warm for MCP servers and hands them out on loopback." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# Same path as in the build stage: a venv's scripts name their interpreter by
# absolute path. Files stay owned by root and are read-only for the runtime user.
COPY --from=build /opt/token-sidecar /opt/token-sidecar

# Runtime user: numeric, so that Kubernetes' runAsNonRoot can verify it.
# No home directory is needed: nothing is written except the Unix socket,
# whose directory (default /run/token-sidecar) is a mounted volume.
USER 10001:10001

ENV PATH="/opt/token-sidecar/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# 8700: token API (loopback only; not reachable through a published port).
# 9700: ops API (/livez /readyz /metrics /status; never a token).
EXPOSE 9700

STOPSIGNAL SIGTERM

# Docker only (Kubernetes ignores HEALTHCHECK and uses the probes in k8s/).
# /livez never depends on the IdP. The slim image has no curl: use Python.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:9700/livez', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["token-sidecar"]
CMD ["serve"]
