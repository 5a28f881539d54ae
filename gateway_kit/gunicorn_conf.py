"""gunicorn settings, all from gateway_kit.settings (defaults in docs/architecture.md).

    gunicorn -c python:gateway_kit.gunicorn_conf     # what entrypoint.sh runs

gunicorn imports this module in its master process, before it forks a worker: a bad GATEWAY_* value stops the
replica here (the message on stderr, exit status 78), and every worker inherits the parsed settings.
"""

from gateway_kit import metrics, settings
from gateway_kit.reload import rewrite_active_config  # not `reload`: gunicorn reads every name here as a setting

try:
    _s = settings.current()
except settings.SettingsError as e:
    raise settings.fail(e) from None

wsgi_app = "gateway_kit.app:create_app()"
worker_class = "gateway_kit.worker.GatewayWorker"
bind = f"{_s.host}:{_s.port}"
workers = _s.workers
# A worker silent this long is restarted; it must outlast the slowest upstream answer.
timeout = _s.timeout
# After SIGTERM (a stop, or a reload's old workers), in-flight requests and streams get this long to finish.
graceful_timeout = _s.graceful_timeout
# Above nginx's 60 s upstream keep-alive, so nginx never reuses a socket the gateway closed.
keepalive = _s.keepalive
# nginx logs every request (JSON, with the request id); usage records carry the rest.
accesslog = "-" if _s.access_log else None
errorlog = "-"
loglevel = _s.log_level
proc_name = f"mlflow-gateway {_s.replica_id}".strip()
forwarded_allow_ips = _s.forwarded_allow_ips
# gunicorn 26's control socket lives in $HOME: read-only in the image, shared between local replicas.
control_socket_disable = True

# Metrics from every worker (gateway_kit/metrics.py): each worker writes its own files in this replica's
# $GATEWAY_RUNTIME_DIR/metrics and GET /metrics merges them. Set here, in the master, so every worker inherits it.
settings.set_prometheus_multiproc_dir(str(metrics.multiprocess_dir(_s.runtime_dir)) if _s.metrics else None)


def on_starting(server):
    """Once per replica start: counters begin at zero, not at a previous run's values."""
    if _s.metrics:
        metrics.reset_multiprocess_dir(metrics.multiprocess_dir(_s.runtime_dir))


def child_exit(server, worker):
    """A worker is gone: its in-flight and other live gauges stop counting (its counters stay in the sums)."""
    if _s.metrics:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_reload(server):
    """SIGHUP (scripts/reload.sh): the start-up checks again on GATEWAY_CONFIG; a good file becomes the active
    config the new workers read, a bad one is refused (its line and reason on this log) and the active config
    stays. gunicorn then starts new workers and stops the old ones gracefully (gateway_kit/reload.py)."""
    if _s.active_config:  # set by entrypoint.sh; without it the workers read GATEWAY_CONFIG itself
        rewrite_active_config(_s.config, _s.active_config, server.log)
