# The gateway image: gunicorn + uvicorn workers serving gateway_kit.app:create_app() on :8000.
# The same image runs the demo's fake LLM (python -m gateway_kit.fake_upstream), see docker-compose.yml.
#   docker compose build                 (or: docker build -t mlflow-gateway:local .)

# One base for both stages: the venv built in `build` records this interpreter's path.
# Pinned to a patch release; bump it on purpose (and pin @sha256:… too if your registry policy wants digests).
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

# ---- build: the locked dependencies in a venv, nothing else ----
FROM ${PYTHON_IMAGE} AS build
# Which lock the venv comes from. The default, requirements-slim.lock, is MLflow's slim distribution
# (mlflow-skinny[gateway], the same mlflow.gateway code) without the data-science stack the gateway never
# imports: an image of about a third the size. The full mlflow[gateway] package is one argument away:
#   docker build --build-arg REQUIREMENTS=requirements.lock .
ARG REQUIREMENTS=requirements-slim.lock
WORKDIR /build
COPY requirements.lock requirements-slim.lock ./
# --require-hashes: every file pip installs must match the lock (nothing unpinned or tampered with).
# --only-binary: wheels only, so the build needs no compiler and cannot run a package's setup.py.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --only-binary=:all: -r "${REQUIREMENTS}"

# ---- runtime ----
FROM ${PYTHON_IMAGE} AS runtime
# GATEWAY_LAUNCHER=docker: the gateway's messages name `docker compose` commands (gateway_kit/launcher.py).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    PATH=/opt/venv/bin:$PATH \
    GATEWAY_CONFIG=/app/config.yaml \
    GATEWAY_PORT=8000 \
    GATEWAY_LEDGER_DIR=/var/lib/gateway-ledger \
    GATEWAY_LAUNCHER=docker

# uid/gid 10001: outside the range of any user on the host, so a bind mount never maps to a real account.
# The ledger directory (and the admin page's audit log directory) are created here, owned by that user: a new
# named volume mounted on one starts with this ownership, so the non-root gateway can write there.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --create-home --home-dir /home/gateway \
        --shell /usr/sbin/nologin gateway \
 && install -d -o gateway -g gateway -m 0750 /var/lib/gateway-ledger /var/lib/gateway-admin

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Code and config stay owned by root: the gateway user can read them, not change them.
COPY gateway_kit/ ./gateway_kit/
COPY config.yaml pricing.yaml ./
COPY --chmod=0755 entrypoint.sh ./

USER 10001:10001
EXPOSE 8000
# gunicorn stops gracefully on SIGTERM (GATEWAY_GRACEFUL_TIMEOUT for in-flight requests); compose's
# stop_grace_period is set above that.
STOPSIGNAL SIGTERM
# No curl in the slim image: Python asks /health. ProxyHandler({}) ignores any HTTP(S)_PROXY meant for providers.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --start-interval=2s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/health' % os.environ.get('GATEWAY_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/app/entrypoint.sh"]
