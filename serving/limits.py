"""Request body size limit: 413 before any route (or authentication) reads an oversized body.

Why a middleware, and why outside authentication: the largest legitimate body is a batch of
1000 patients (~1 MB of JSON; the batch limit itself answers 400), so anything much larger is a
mistake or an attack, and refusing it before the token check means an unauthenticated client
cannot make the worker buffer megabytes either. A declared `Content-Length` over the limit is
refused without reading a byte; a body without one (chunked) is read into memory only up to
the limit, then replayed to the app, so memory per request stays bounded by the limit.
Configure with `KETAPREDICT_MAX_BODY_BYTES` (default 2 MiB).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyLimitMiddleware", "EnvBodyLimitMiddleware"]

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
ENV = "KETAPREDICT_MAX_BODY_BYTES"


class BodyLimitMiddleware:
    """ASGI middleware answering 413 `{"error": "request body too large", ...}` over `max_bytes`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope.get("headers", []) if k == b"content-length"]
        if declared:
            length = declared[0].decode("latin-1").strip()
            if not length.isdigit() or int(length) > self.max_bytes:
                await self._refuse(send, 413 if length.isdigit() else 400)
                return
            await self.app(scope, receive, send)  # the server enforces the declared framing
            return
        buffered = await self._read_bounded(receive)
        if buffered is None:
            await self._refuse(send, 413)
            return

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    async def _read_bounded(self, receive: Receive) -> list[Message] | None:
        """The body's messages, or None as soon as they add up to more than the limit."""
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # a disconnect: let the app see it
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return messages

    async def _refuse(self, send: Send, status: int) -> None:
        error = "request body too large" if status == 413 else "invalid content-length"
        body = json.dumps({"error": error, "max_bytes": self.max_bytes}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the unread body makes the connection unusable
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def max_body_bytes_from_env(environ: Mapping[str, str] | None = None) -> int:
    """`KETAPREDICT_MAX_BODY_BYTES` as a positive integer; a bad value stops start-up."""
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BODY_BYTES
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ENV} must be a positive number of bytes")
    return int(raw)


class EnvBodyLimitMiddleware(BodyLimitMiddleware):
    """`BodyLimitMiddleware` with its limit read from the environment when the server starts."""

    def __init__(self, app: ASGIApp, *, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(app, max_bytes=max_body_bytes_from_env(environ))
