"""The gunicorn worker class: uvicorn's, with SIGTERM draining in-flight requests (streams too)."""

from uvicorn_worker import UvicornWorker


class GatewayWorker(UvicornWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn waits forever for open requests unless told otherwise, and gunicorn then kills the
        # worker at graceful_timeout mid-stream. Stop one second earlier, cleanly.
        self.config.timeout_graceful_shutdown = max(self.cfg.graceful_timeout - 1, 1)
