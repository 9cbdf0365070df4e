"""Log records that cry wolf: a client's fault that uvicorn logs as a server error with a traceback.

A text frame that is not UTF-8 is the client's protocol error: uvicorn closes the socket with 1007 (what RFC
6455 says) but logs "Invalid UTF-8 sequence received from client." at ERROR with the decode traceback. Here it
becomes one INFO line without the traceback, so that the server's errors and tracebacks are the server's own.
"""

from __future__ import annotations

import logging

__all__ = ["ClientFaults", "install"]

# uvicorn's message -> what the line says instead
CLIENT_FAULTS = {
    "Invalid UTF-8 sequence received from client.": "a client sent a text frame that is not UTF-8: closed with 1007",
}


class ClientFaults(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        said = CLIENT_FAULTS.get(record.msg) if isinstance(record.msg, str) else None
        if said is not None:
            record.msg, record.args = said, ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


def install(logger: str = "uvicorn.error") -> None:
    """After uvicorn has configured its loggers (uvicorn.Config does): its dictConfig would drop the filter."""
    target = logging.getLogger(logger)
    if not any(isinstance(f, ClientFaults) for f in target.filters):
        target.addFilter(ClientFaults())
