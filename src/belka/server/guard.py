"""What stands at the service's door: who may talk to it, how long a request may take to
arrive, how big it may be, and what every answer tells the browser.

* :class:`Door` (ASGI middleware): the Host allow-list (DNS rebinding), the same-origin rule
  for every state-changing request (a page on another site cannot POST or DELETE here), the
  optional API token, and the security headers on every answer.
* :class:`BodyGuard` (ASGI middleware): 413 for a body over the limit, 408 for a body that
  does not arrive in time.
* :class:`GuardedH11Protocol` (uvicorn's HTTP/1.1 protocol): a deadline for the request line
  and headers, and a cap on open connections, which uvicorn alone does not have.
* :class:`MemoryBudget`: the bytes of decoded pixels in flight; a request past the budget waits
  for room or gets 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import threading
import time
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from typing import Iterable
from urllib.parse import parse_qs, urlencode

from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "belka_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Pages and API: our own scripts only (onnxruntime-web needs 'wasm-unsafe-eval' to compile
# WebAssembly, nothing else), no inline script, no frames, no outside hosts.
PAGE_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
            "img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Swagger UI and ReDoc start from an inline script that FastAPI writes; those two pages show
# only the schema, never user content.
DOCS_CSP = PAGE_CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'")
# A stored upload is somebody else's file: never a document that runs anything.
FILE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
DOCS_PATHS = ("/docs", "/redoc")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> str:
    """The host part of a Host header ("example.com:8000" -> "example.com", "[::1]:80" -> "::1")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def error(status: int, message: str, kind: str, headers: dict[str, str] | None = None):
    return JSONResponse({"detail": message, "error": kind}, status_code=status, headers=headers)


class Door:
    """ASGI middleware for trust at the door; see the module's docstring.

    ``allowed_hosts``: names (besides the loopback ones) the Host header may carry; ``"*"``
    allows any (behind a proxy that checks it). ``token``: when set, every request but
    ``/api/v1/health`` and ``/static`` needs it, as ``Authorization: Bearer TOKEN`` (API
    clients) or the ``belka_token`` cookie (pages; set by opening any page once with
    ``?token=TOKEN``)."""

    def __init__(self, app, *, allowed_hosts: Iterable[str] = (), token: str | None = None):
        self.app = app
        self.hosts = {h.lower().strip("[]") for h in allowed_hosts} | set(LOOPBACK_HOSTS)
        self.any_host = "*" in self.hosts
        self.token = token or None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers") or []}
        path = scope.get("path", "")
        refusal = self.refusal(scope, headers, path)
        if refusal is not None:
            return await self._send_with_headers(refusal, path)(scope, receive, send)
        if self.token and scope["method"] == "GET" and "token" in parse_qs(
                scope.get("query_string", b"").decode("latin-1")):
            return await self._send_with_headers(self._cookie_redirect(scope), path)(
                scope, receive, send)

        async def secure_send(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = _with_security_headers(list(message.get("headers", [])), path)
            await send(message)

        await self.app(scope, receive, secure_send)

    # -- the rules -----------------------------------------------------------------------
    def refusal(self, scope, headers: dict[str, str], path: str):
        """The error answer for a request that may not pass, or None."""
        host = split_host(headers.get("host", ""))
        if not self.any_host and host not in self.hosts:
            return error(400, f"unknown Host {headers.get('host', '')!r}: this server answers to "
                              f"{', '.join(sorted(self.hosts))} (start it with --allowed-host "
                              "NAME to add a name)", "bad_host")
        if scope["method"] in UNSAFE_METHODS and not self.same_origin(headers, scope):
            return error(403, "cross-site request refused: a page on another site may not "
                              "change anything here (the Origin or Sec-Fetch-Site header says "
                              "the request came from elsewhere)", "cross_origin")
        if self.token and not self._public(path) and not self._has_token(headers, scope):
            return error(401, "this server needs its token: send 'Authorization: Bearer TOKEN', "
                              "or open a page once with ?token=TOKEN (the link `belka serve` "
                              "printed)", "unauthorized", {"WWW-Authenticate": "Bearer"})
        return None

    @staticmethod
    def same_origin(headers: dict[str, str], scope) -> bool:
        """True unless the browser says the request came from another site. Clients that are
        not browsers (curl, scripts) send neither header and pass; every current browser sends
        Sec-Fetch-Site, and Origin on every cross-origin POST."""
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        if origin is None:
            return True
        if origin == "null":  # sandboxed frames, file:// pages, some redirects
            return False
        scheme = scope.get("scheme", "http")
        return origin.lower().rstrip("/") == f"{scheme}://{headers.get('host', '').lower()}"

    @staticmethod
    def _public(path: str) -> bool:
        return path == "/api/v1/health" or path.startswith("/static/") or path == "/favicon.ico"

    def _has_token(self, headers: dict[str, str], scope) -> bool:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(),
                                                                 self.token.encode()):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no token
            return False
        value = cookie.get(TOKEN_COOKIE)
        if value is not None and hmac.compare_digest(value.value.encode(), self.token.encode()):
            return True
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = (query.get("token") or [""])[0]
        return scope["method"] == "GET" and bool(given) and hmac.compare_digest(
            given.encode(), self.token.encode())

    def _cookie_redirect(self, scope):
        """GET with a right ?token=: set the cookie and come back without it in the URL (so it
        stays out of history and logs)."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        query.pop("token", None)
        target = scope.get("path", "/") + (f"?{urlencode(query, doseq=True)}" if query else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                            path="/")
        return response

    @staticmethod
    def _send_with_headers(response, path: str):
        response.raw_headers = _with_security_headers(list(response.raw_headers), path)
        return response


def _with_security_headers(headers: list[tuple[bytes, bytes]], path: str):
    names = {k.lower() for k, _ in headers}
    csp = DOCS_CSP if path in DOCS_PATHS else PAGE_CSP

    def add(name: str, value: str):
        if name.encode() not in names:
            headers.append((name.encode(), value.encode()))

    add("content-security-policy", csp)
    add("x-content-type-options", "nosniff")
    add("x-frame-options", "DENY")
    add("referrer-policy", "no-referrer")
    add("cross-origin-opener-policy", "same-origin")
    add("cross-origin-embedder-policy", "require-corp")
    add("cross-origin-resource-policy", "same-origin")
    return headers


# --------------------------------------------------------------------------------------------
# Request bodies


class BodyTooLarge(StarletteHTTPException):
    """The request body went past the configured limit. An HTTP exception, so the framework's
    body parsing passes it through unchanged and it is answered as a 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"upload too large: the limit is {limit / 2**20:g} MB "
                              "(belka serve --max-upload-mb)")


class BodyTimeout(StarletteHTTPException):
    """The body did not arrive in time (a stalled or deliberately slow client)."""

    def __init__(self, seconds: float):
        super().__init__(408, f"the request body did not arrive within {seconds:g} s")


class BodyGuard:
    """ASGI middleware: 413 for a body over ``limit`` bytes, whether or not Content-Length says
    so up front (chunked bodies are counted as they arrive), and 408 when the body stalls for
    ``idle_s`` or takes longer than ``total_s`` in all."""

    def __init__(self, app, limit: int, idle_s: float = 15.0, total_s: float = 120.0):
        self.app, self.limit, self.idle_s, self.total_s = app, limit, idle_s, total_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            too_large = BodyTooLarge(self.limit)
            return await error(413, too_large.detail, "payload_too_large")(scope, receive, send)
        seen = 0
        started = False
        deadline = time.monotonic() + self.total_s

        async def guarded_receive():
            nonlocal seen
            wait = min(self.idle_s, deadline - time.monotonic())
            try:
                event = await asyncio.wait_for(receive(), timeout=max(wait, 0.001))
            except asyncio.TimeoutError:
                raise BodyTimeout(self.idle_s if wait >= self.idle_s else self.total_s) from None
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return event

        async def tracking_send(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as err:
            if not started:
                kind = "payload_too_large" if err.status_code == 413 else "request_timeout"
                await error(err.status_code, err.detail, kind)(scope, receive, send)


# --------------------------------------------------------------------------------------------
# Connections


def guarded_protocol(header_timeout: float, max_connections: int):
    """uvicorn's h11 protocol with a deadline for each request's line and headers (from the
    connection's start, or the end of the previous answer on a kept-alive connection) and a
    cap on open connections: past it, a new connection is closed at once."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.connections.discard(self)
                transport.close()
                return
            self._arm()

        def _arm(self):
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self):
            self._header_timer = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()

        def data_received(self, data):
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a whole request line and headers arrived
                self._disarm()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


_TIMEOUT_BODY = b'{"detail":"the request headers did not arrive in time","error":"request_timeout"}'
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                     b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_TIMEOUT_BODY)
                     + _TIMEOUT_BODY)


# --------------------------------------------------------------------------------------------
# Memory


class Refused(Exception):
    """The service cannot do this (now): answered as JSON ``{"detail", "error": kind}`` with
    ``status``, and ``Retry-After`` when waiting may help."""

    def __init__(self, message: str, *, status: int, kind: str, retry_after: int | None = None):
        super().__init__(message)
        self.message, self.status, self.kind, self.retry_after = message, status, kind, retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return error(self.status, self.message, self.kind, headers)


class ServiceBusy(Refused):
    """Too much at once: 503 (or 429 for a client's own excess) with ``Retry-After``."""

    def __init__(self, message: str, *, status: int = 503, kind: str = "busy",
                 retry_after: int = 5):
        super().__init__(message, status=status, kind=kind, retry_after=retry_after)


class MemoryBudget:
    """Bytes of decoded pixels in flight, across all requests and jobs.

    A request reserves what its image will cost before decoding it and gives it back when its
    answer is made; past the budget it waits (up to ``wait_s``) for room, then gets
    :class:`ServiceBusy`. One request alone may always run, whatever its size (it passed the
    pixel limit), so no image that is allowed at all is refused for ever."""

    def __init__(self, limit: int, wait_s: float = 30.0):
        self.limit, self.wait_s = limit, wait_s
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def _busy(self) -> ServiceBusy:
        return ServiceBusy(
            f"busy: {self.in_flight / 2**20:.0f} MB of images are being worked on (the budget "
            f"is {self.limit / 2**20:.0f} MB; belka serve --memory-mb); try again shortly")

    def try_acquire(self, n: int) -> bool:
        with self._lock:
            if self.in_flight and self.in_flight + n > self.limit:
                return False
            self.in_flight += n
            self.peak = max(self.peak, self.in_flight)
            return True

    def acquire(self, n: int, wait_s: float | None = None) -> None:
        """Blocking: for worker threads and jobs."""
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        with self._cond:
            while self.in_flight and self.in_flight + n > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._busy()
                self._cond.wait(left)
            self.in_flight += n
            self.peak = max(self.peak, self.in_flight)

    def release(self, n: int) -> None:
        with self._cond:
            self.in_flight -= n
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    @asynccontextmanager
    async def reserve(self, n: int):
        """Async: wait for room without holding a thread or the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while True:
            event = asyncio.Event()
            with self._lock:
                self._waiters.append((loop, event))
            if self.try_acquire(n):
                break
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(event.wait(), left)
            except asyncio.TimeoutError:
                raise self._busy() from None
        try:
            yield
        finally:
            self.release(n)
