"""gunicorn settings, all from the environment (defaults in docs/architecture.md).

gunicorn -c python:gateway_kit.gunicorn_conf     # what entrypoint.sh runs
"""

import os

from gateway_kit import metrics
from gateway_kit.launcher import fix_setting


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise SystemExit(f"gateway: error: {name}={value!r} is not a whole number — {fix_setting(name)}") from None


wsgi_app = "gateway_kit.app:create_app()"
worker_class = "gateway_kit.worker.GatewayWorker"
bind = f"{os.environ.get('GATEWAY_HOST', '0.0.0.0')}:{_env_int('GATEWAY_PORT', 8000)}"
workers = _env_int("GATEWAY_WORKERS", 2)
# A worker silent this long is restarted; it must outlast the slowest upstream answer.
timeout = _env_int("GATEWAY_TIMEOUT", 300)
# After SIGTERM, in-flight requests and streams get this long to finish.
graceful_timeout = _env_int("GATEWAY_GRACEFUL_TIMEOUT", 30)
# Above nginx's 60 s upstream keep-alive, so nginx never reuses a socket the gateway closed.
keepalive = _env_int("GATEWAY_KEEPALIVE", 75)
# nginx logs every request (JSON, with the request id); usage records carry the rest.
accesslog = "-" if os.environ.get("GATEWAY_ACCESS_LOG") == "1" else None
errorlog = "-"
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info")
proc_name = f"mlflow-gateway {os.environ.get('GATEWAY_REPLICA_ID', '')}".strip()
forwarded_allow_ips = os.environ.get("GATEWAY_FORWARDED_ALLOW_IPS", "127.0.0.1")
# gunicorn 26's control socket lives in $HOME: read-only in the image, shared between local replicas.
control_socket_disable = True

# Metrics from every worker (gateway_kit/metrics.py): each worker writes its own files in this replica's
# $GATEWAY_RUNTIME_DIR/metrics and GET /metrics merges them. Set here, in the master, so every worker inherits it.
if metrics.enabled():
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics.multiprocess_dir())
else:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def on_starting(server):
    """Once per replica start: counters begin at zero, not at a previous run's values."""
    if metrics.enabled():
        metrics.reset_multiprocess_dir(metrics.multiprocess_dir())


def child_exit(server, worker):
    """A worker is gone: its in-flight and other live gauges stop counting (its counters stay in the sums)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
