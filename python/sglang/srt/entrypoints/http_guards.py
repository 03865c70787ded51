"""Guards every HTTP request passes before a route sees it: the API keys and the body-size limit.

Both are plain ASGI middleware around the FastAPI app, so every route, present and future (the
OpenAI and Anthropic layers included), inherits them without doing anything:

* ``ApiKeyGuard`` (contract section 1.3): ``Authorization: Bearer <key>``, the scheme compared
  case-insensitively and the key in constant time. ``OPTIONS`` and paths under ``/health``,
  ``/ready`` and ``/metrics`` are always open. A route marked ``admin_optional`` needs the admin
  key when one is set (the user key is then refused), else the user key when one is set; every
  other route needs the user key when one is set. Refusals are 401 ``{"error": "Unauthorized"}``.
  Keys never appear in a reply or a log line. The Anthropic routes (``ANTHROPIC_PREFIX``) also
  take the key in ``x-api-key``, the header Anthropic clients send.
* ``BodyLimitGuard``: a body larger than ``--max-request-body-bytes`` is refused with 413 before it
  is read whole (by its Content-Length, or as it streams in).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.routing import Match

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
OPEN_PREFIXES = ("/health", "/ready", "/metrics")
ADMIN_OPTIONAL = "_sglang_admin_optional"
ANTHROPIC_PREFIX = "/v1/messages"


def admin_optional(endpoint: Callable) -> Callable:
    """Marks a route as an admin route: it takes the admin key when the server has one."""
    setattr(endpoint, ADMIN_OPTIONAL, True)
    return endpoint


async def send_json(send: Callable, status: int, body: Any,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


def error_body(message: str, code: int) -> dict[str, Any]:
    """The E4 error object of the contract."""
    return {"object": "error", "message": message, "type": str(code), "param": None, "code": code}


class ApiKeyGuard:
    def __init__(self, app: ASGIApp, api_key: str | None, admin_api_key: str | None,
                 routes: Callable[[], list[Any]]) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.admin_api_key = admin_api_key.encode() if admin_api_key else None
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await send_json(send, 401, {"error": "Unauthorized"})

    def _allowed(self, scope: Scope) -> bool:
        if self.api_key is None and self.admin_api_key is None:
            return True
        path = scope.get("path", "")
        if scope.get("method") == "OPTIONS" or path.startswith(OPEN_PREFIXES):
            return True
        token = _bearer_token(scope)
        if self._is_admin_route(scope):
            expected = self.admin_api_key or self.api_key
        else:
            expected = self.api_key
        if expected is None:
            return True
        if token is None and path.startswith(ANTHROPIC_PREFIX):
            token = _header(scope, b"x-api-key")
        return token is not None and secrets.compare_digest(token, expected)

    def _is_admin_route(self, scope: Scope) -> bool:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(getattr(route, "endpoint", None), ADMIN_OPTIONAL, False)
        return False


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token:
                return token
            return None
    return None


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return value or None
    return None


class BodyLimitGuard:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: int | None) -> dict[str, Any]:
        got = "larger" if size is None else f"{size} bytes,"
        return error_body(f"The request body is {got} over the server's limit of "
                          f"{self.max_bytes} bytes (--max-request-body-bytes).", 413)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = 0
                if size > self.max_bytes:
                    await send_json(send, 413, self._message(size), [(b"connection", b"close")])
                    return
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await send_json(send, 413, self._message(None), [(b"connection", b"close")])
        except Exception:
            if too_large and not started:  # the route wrapped our signal in its own error
                await send_json(send, 413, self._message(None), [(b"connection", b"close")])
                return
            raise


class _BodyTooLarge(Exception):
    pass
