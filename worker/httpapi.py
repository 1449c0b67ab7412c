"""What every HTTP face of the worker shares: RunPod's error shape, the API key, request bodies.

The local queue endpoint (`worker.serve`), the load-balancing endpoint (`worker.lb`) and the
playground's routes (`worker.playground`) answer errors the same way, `{"error": "<sentence>"}`
with the status code, check `LOCAL_API_KEY` the same way (`Authorization: Bearer <key>` or the
bare key, as RunPod takes both) and read bodies under the same kind of size limit.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from worker.config import MB

KEY_HINT = "send Authorization: Bearer <LOCAL_API_KEY>"


class ApiError(Exception):
    """An HTTP error answered as RunPod does: `{"error": "<sentence>"}` with the status code,
    plus any `headers` (e.g. `Retry-After` on a 503)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class ClientGone(Exception):
    """The client hung up before its request body arrived whole: there is no one to answer."""


def install_error_handlers(app: FastAPI) -> None:
    """Answer `ApiError` in RunPod's shape, and a client gone mid-body without a traceback."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone) -> JSONResponse:
        return JSONResponse({"error": "the client closed the connection"}, status_code=400)


def key_check(api_key: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency refusing requests without `api_key` (no check when it is None)."""

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else given
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, f"missing or wrong API key ({KEY_HINT})")

    return authorize


async def read_body(request: Request, limit: int, keep: bool = True) -> bytes:
    """The whole request body, or 413 when it is over `limit` bytes.

    An over-size body is still read to its end (and dropped), so that the client, which sends
    it all before it reads, gets the 413 instead of a reset connection. `keep=False` reads a
    body only to drop it (a request refused before its body matters).
    """
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if keep and size <= limit:
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone from None
    if size > limit:
        raise ApiError(413, f"the request body is {size / MB:.1f} MB, over the {limit / MB:g} MB allowed")
    return b"".join(chunks)
