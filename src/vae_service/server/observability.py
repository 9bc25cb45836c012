"""Metrics, request ids and structured logs.

``RequestObservability`` is the outermost middleware: it gives each request an id
(the client's ``X-Request-ID`` when it is short and plain, else a fresh one), echoes it
in the response, counts and times the request under its route template (Starlette's
``scope["route"]``) and the model its answer names (X-Model), and writes one JSON log
line for it. An exception that escapes the app is logged with its traceback and the
request id, and answered with a generic 500: no traceback ever reaches a client. A 499
(the client left, server/serving.py) is recorded and never sent. It is plain ASGI, not
BaseHTTPMiddleware: a few microseconds a request.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vae_service.server.errors import ModelFailure, error_response
from vae_service.server.metrics import Metrics
from vae_service.server.randomness import new_request_id

logger = logging.getLogger("service")
access_logger = logging.getLogger("service.access")
REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"  # one label for every unknown path, so scanners add no series
# nginx's status for a request that ended with no answer sent (its client left, or it
# was cancelled): logged and counted under it, never sent.
CLIENT_CLOSED = 499
MODEL_HEADER = b"x-model"


def request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is 1-64 safe characters, else a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            if REQUEST_ID.fullmatch(text):
                return text
            break
    return new_request_id()


def endpoint_of(scope: Scope) -> str:
    """The matched route's template (``/encode``), never the raw path."""
    route = scope.get("route")
    return UNMATCHED if route is None else str(route.path)


class RequestObservability:
    """Request ids, metrics and one log line per request (see the module docstring)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(scope)
        header = (REQUEST_ID_HEADER, rid.encode())
        status, model = CLIENT_CLOSED, ""

        async def send_with_id(message: Message) -> None:
            nonlocal status, model
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.setdefault("headers", [])
                model = next((v.decode() for k, v in headers if k == MODEL_HEADER), "")
                message["headers"] = [*headers, header]
            if status != CLIENT_CLOSED:  # nobody to answer
                await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            logger.exception("unhandled error", extra={"fields": {"request_id": rid}})
            if status == CLIENT_CLOSED:  # nothing sent yet: answer, without details
                headers = exc.headers if isinstance(exc, ModelFailure) else {}
                reply = error_response(scope["path"], 500, "internal server error", headers)
                await reply(scope, receive, send_with_id)
        finally:  # a request cancelled (client gone, shutdown timeout) is recorded too
            self._record(scope, rid, status, model, time.perf_counter() - started)

    def _record(self, scope: Scope, rid: str, status: int, model: str, seconds: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        self.metrics.observe_request(endpoint_of(scope), method, status, model, seconds)
        if status >= 500 or self.access_log:
            fields = {
                "method": method,
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "request_id": rid,
                **({"model": model} if model else {}),
            }
            level = logging.INFO if status < 500 else logging.WARNING
            if status == 500:
                level = logging.ERROR
            if access_logger.isEnabledFor(level):
                # makeRecord + handle: log() would also walk the stack for the caller's
                # file and line, which this line does not show (a third of its cost).
                record = access_logger.makeRecord(
                    access_logger.name, level, "", 0, "request", (), None, extra={"fields": fields}
                )
                access_logger.handle(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the
    record's ``fields``, and the traceback (for server logs only) when there is one."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def utc(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def server_log_config(level: str) -> dict[str, Any]:
    """uvicorn's ``log_config`` for vae-serve: uvicorn's own loggers (``uvicorn``,
    ``uvicorn.error``, ``uvicorn.access``), the service's and Python warnings
    (``py.warnings``) all write the same JSON lines to stderr, so a log shipper sees
    one format from start-up to shutdown."""
    stderr = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    logger = {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": stderr},
        "loggers": {name: dict(logger) for name in ("service", "uvicorn", "py.warnings")},
    }


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the ``service`` loggers (requests included)."""
    root = logging.getLogger("service")
    root.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
