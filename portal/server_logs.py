"""What the ASGI servers log about a client's own fault.

uvicorn (its websockets-sansio protocol, the production worker's) logs a text frame that is
not UTF-8 with `logger.exception` and a traceback, although it has already done what RFC
6455 §8.1 asks (closed the socket with 1007) and nothing on the server failed. Such a
record stays in the log, as a warning without the traceback, so that a traceback in the
server's log always means a fault of the server. Matched by its message: the live test
(tests/connector/test_hardening_live.py) fails if uvicorn words it otherwise.
"""

from __future__ import annotations

import logging

CLIENT_FAULTS = frozenset({"Invalid UTF-8 sequence received from client."})
SERVER_LOGGERS = ("uvicorn.error",)


class ClientFaultsWithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() in CLIENT_FAULTS:
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install() -> None:
    """Idempotent: the ASGI module may be imported more than once."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ClientFaultsWithoutTraceback) for f in logger.filters):
            logger.addFilter(ClientFaultsWithoutTraceback())
