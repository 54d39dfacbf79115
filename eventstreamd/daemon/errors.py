"""One error body for every error: the spec's Error Details shape.

Every error response, on every route (unknown routes and methods included), is
`{"error_code", "message", "request_id"}` with `X-Request-Id` set to the same
id. Handlers raise `ApiError`; the middleware here turns it, aiohttp's own
HTTP exceptions and anything unexpected (500, logged with its traceback, never
shown to the client) into that body. A client that disconnected before its
answer gets neither: one INFO line, and the connection is dropped.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..logs import kv

log = logging.getLogger("eventstreamd.http")

REQUEST_ID = web.RequestKey("request_id", str)
# Request ids: unique, not secret. A random per-process prefix and a counter cost one
# integer increment per request; uuid4 (an urandom syscall each) showed in profiles.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"

CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    408: "request_timeout",
    431: "headers_too_large",
    500: "internal_error",
    502: "delivery_failed",
    503: "unavailable",
    507: "insufficient_storage",
}


class ApiError(Exception):
    def __init__(self, status: int, error_code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, error_code: str, message: str, request_id: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error_code": error_code, "message": message, "request_id": request_id},
        status=status,
        headers={**(headers or {}), "X-Request-Id": request_id},
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.error_code, exc.message, request_id, exc.headers)
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # A body aiohttp cannot decode (bad gzip or deflate, a broken chunked
        # encoding) is the client's fault: 400, never a 500 with a traceback.
        cause = exc.__cause__ or exc
        reason = str(getattr(cause, "message", "") or cause)
        log.info("request body refused", extra=kv(request_id=request_id, path=request.path,
                                                  reason=reason))
        # The rest of such a body cannot be read either. aiohttp drains an unread body
        # after the answer and would meet this error again (and log it as unhandled);
        # a timeout is what its drain treats as "give up and close".
        request.content.set_exception(TimeoutError("the request body cannot be read"))
        return error_response(400, "invalid_body", "the request body cannot be read (bad "
                              f"Content-Encoding or chunked framing): {reason}", request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers["X-Request-Id"] = request_id
            raise
        code = CODES_BY_STATUS.get(exc.status, "http_error")
        message = exc.text if exc.status == 413 and exc.text else exc.reason
        response = error_response(exc.status, code, message, request_id)
        if exc.status == 405:
            allow = exc.headers.get("Allow")
            if allow:
                response.headers["Allow"] = allow
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionError) and request.transport is None:
            # The client went away (mid-body, or before its answer): nothing to
            # answer, nothing wrong here. aiohttp drops the connection quietly
            # (http_server.py); a ConnectionError of the handler's own, with the
            # client still there, is a 500 like anything else.
            log.info("client disconnected before the response", extra=kv(
                request_id=request_id, method=request.method, path=request.path,
                error=f"{type(exc).__name__}: {exc}"))
            raise
        log.exception("unhandled error", extra=kv(request_id=request_id, path=request.path))
        return error_response(500, "internal_error", "internal server error", request_id)
    response.headers["X-Request-Id"] = request_id
    return response

