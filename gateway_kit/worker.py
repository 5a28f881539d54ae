"""The gunicorn worker class: uvicorn's, with SIGTERM draining in-flight requests (streams too)."""

import logging

from uvicorn_worker import UvicornWorker

from gateway_kit import reload
from gateway_kit.private_api import draining_http_protocol

# A stopping worker (a replica's stop, a reload's old workers) still reads, for this long, a connection it has
# accepted but not yet read: the request on its way is answered, not cut (gateway_kit.private_api).
LAST_REQUEST_GRACE_S = 1.0
_DRAINING = draining_http_protocol(LAST_REQUEST_GRACE_S)
if _DRAINING is None:
    logging.getLogger("gateway_kit").warning(
        "uvicorn has no AutoHTTPProtocol.shutdown: a request that reaches a worker as it stops may be cut"
    )


class GatewayWorker(UvicornWorker):
    # uvicorn_worker's documented way to choose the loop and the HTTP protocol.
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, **({"http": _DRAINING} if _DRAINING else {})}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn waits forever for open requests unless told otherwise, and gunicorn then kills the
        # worker at graceful_timeout mid-stream. Stop one second earlier, cleanly.
        self.config.timeout_graceful_shutdown = max(self.cfg.graceful_timeout - 1, 1)

    def init_process(self) -> None:
        reload.under_master(self.ppid)  # in the worker, before the app loads: whom POST /-/reload signals
        super().init_process()
