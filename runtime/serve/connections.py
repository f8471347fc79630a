"""What a client can hold: open connections, and the time it may take to send a request.

uvicorn closes a keep-alive connection that stays idle after a response (`keep_alive_s`), but not one that
never completes its request headers (a slowloris client, or a connect that sends nothing), nor one that sends a
POST's headers and then its body a byte at a time: those would be held until a timeout. `guarded_protocol`
subclasses uvicorn's HTTP protocol (h11 or httptools, whichever uvicorn picks) to
  - close a connection whose request headers have not all arrived `header_timeout_s` after the connect or after
    the end of its previous response (the body has its own deadline: request.read_body answers 408);
  - keep at most `limit` connections open: a new one beyond it closes the oldest slow body (a request whose body
    has been arriving for over `SLOW_BODY_S`), else the oldest idle one (no request in progress), else the
    oldest body still arriving, else itself (every other one is being answered); so neither idle connections
    nor slow bodies can lock out real clients, and the server never runs out of file descriptors (the launcher
    keeps the limit below the process's fd limit);
  - keep at most `body_limit` connections in the body phase (headers in, body not yet), and `body_per_ip` per
    client address: one more closes the oldest such connection (of that address, for the per-address limit).
`FramingGuard` answers 400 and closes the connection for a request that has both Content-Length and
Transfer-Encoding (RFC 9112 6.3: a request-smuggling pattern; the connection must not be reused).
`CloseOnShutdown` adds `Connection: close` to every response once a graceful shutdown has begun, so a client
knows that a request it pipelined behind one is not answered on this connection (RFC 9112 9.6).
"""

from __future__ import annotations

import collections
import json
import time

SLOW_BODY_S = 1.0  # a body still arriving after this long is "slow": the first to go when connections run out


class Connections:
    """The open connections of one server, oldest first, those whose body is still arriving, and what was done
    to them (counters for tests and benchmarks)."""

    def __init__(self, limit: int, body_limit: int | None = None, body_per_ip: int | None = None,
                 clock=time.monotonic):
        self.limit = limit
        self.body_limit = max(1, min(body_limit or limit, limit))
        self.body_per_ip = max(1, min(body_per_ip or self.body_limit, self.body_limit))
        self.clock = clock
        self.open: dict = {}  # protocol -> None, in connect order
        self.bodies: dict = {}  # protocol -> (client address, when its body phase began), oldest first
        self.per_ip: collections.Counter = collections.Counter()
        self.evicted = self.evicted_bodies = self.timed_out = 0
        self.closing = False  # a graceful shutdown has begun

    def add(self, proto) -> bool:
        """Register a new connection; False when it was closed at once (every other one is busy)."""
        self.open[proto] = None
        if len(self.open) <= self.limit:
            return True
        victim = self._slow_body(proto) or next((p for p in self.open if p is not proto and _idle(p)), None)
        victim = victim or next((p for p in self.bodies if p is not proto), proto)
        self._close(victim)
        return victim is not proto

    def body_started(self, proto, ip: str) -> None:
        """`proto` has its request's headers and waits for the body: count it against the body-phase limits."""
        if proto in self.bodies:
            return
        self.bodies[proto] = (ip, self.clock())
        self.per_ip[ip] += 1
        if self.per_ip[ip] > self.body_per_ip:
            self._close(next(p for p, (a, _) in self.bodies.items() if a == ip))
        if len(self.bodies) > self.body_limit:
            self._close(next(iter(self.bodies)))

    def body_ended(self, proto) -> None:
        entry = self.bodies.pop(proto, None)
        if entry is not None:
            self.per_ip[entry[0]] -= 1
            if not self.per_ip[entry[0]]:
                del self.per_ip[entry[0]]

    def discard(self, proto) -> None:
        self.open.pop(proto, None)
        self.body_ended(proto)

    def _slow_body(self, proto):
        for p, (_, since) in self.bodies.items():  # oldest first: only the first can be the oldest slow one
            return p if p is not proto and self.clock() - since >= SLOW_BODY_S else None
        return None

    def _close(self, victim) -> None:
        if victim in self.bodies:
            self.evicted_bodies += 1
        else:
            self.evicted += 1
        self.discard(victim)
        victim.transport.close()


def _idle(proto) -> bool:
    cycle = getattr(proto, "cycle", None)  # the request/response in progress on this connection, if any
    return cycle is None or bool(getattr(cycle, "response_complete", True))


def _in_body(proto) -> bool:
    """The request's headers are in, its body is not, and no answer has begun."""
    cycle = getattr(proto, "cycle", None)
    return (cycle is not None and bool(getattr(cycle, "more_body", False))
            and not getattr(cycle, "response_started", True) and not proto.transport.is_closing())


def guarded_protocol(base: type, connections: Connections, header_timeout_s: float) -> type:
    """A subclass of uvicorn's HTTP protocol class `base` with the header timeout and the connection limits."""

    class GuardedProtocol(base):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if connections.add(self):
                self._arm()

        def data_received(self, data) -> None:
            super().data_received(data)
            self._track_body()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request
            self._track_body()
            self._arm()  # the next request's headers are due within header_timeout_s too

        def shutdown(self) -> None:
            connections.closing = True
            super().shutdown()

        def _track_body(self) -> None:
            if _in_body(self):
                connections.body_started(self, self.client[0] if self.client else "")
            else:
                connections.body_ended(self)

        def connection_lost(self, exc) -> None:
            connections.discard(self)
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self._header_timer = self.loop.call_later(header_timeout_s, self._expire, self.cycle)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self, cycle) -> None:
            self._header_timer = None
            if self.cycle is cycle and _idle(self) and not self.transport.is_closing():  # no request began since
                connections.timed_out += 1
                self.transport.close()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol


class FramingGuard:
    """Pure ASGI: 400 + Connection: close for a request with both Content-Length and Transfer-Encoding."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            names = {k.lower() for k, _ in scope.get("headers", ())}
            if b"content-length" in names and b"transfer-encoding" in names:
                body = json.dumps({"error": "a request may not have both Content-Length and Transfer-Encoding",
                                   "error_type": "bad_request"}).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class CloseOnShutdown:
    """Pure ASGI: `Connection: close` on every response started after a graceful shutdown began."""

    def __init__(self, app, connections: Connections):
        self.app, self.connections = app, connections

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(message):
            if message["type"] == "http.response.start" and self.connections.closing:
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


class HostGuard:
    """Pure ASGI: 400 (one JSON line) for a request whose Host header is not one of `patterns` (against DNS
    rebinding: a web page on another name reaching a loopback server). The matching (host:port, IPv6 literals,
    "*.domain" patterns) is starlette's TrustedHostMiddleware; only its plain-text refusal is replaced."""

    def __init__(self, app, patterns: list[str]):
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        self.app = app
        self.any = "*" in patterns
        self.check = TrustedHostMiddleware(self._accepted, allowed_hosts=patterns, www_redirect=False)

    async def _accepted(self, scope, receive, send):
        scope["hadskip.host_ok"] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if self.any or scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def refused_or_app(message):  # the middleware's own refusal is dropped; the app's answer passes
            if scope.get("hadskip.host_ok"):
                await send(message)

        await self.check(scope, receive, refused_or_app)
        if not scope.get("hadskip.host_ok"):
            body = json.dumps({"error": "this server does not answer to that Host header (see --allowed-hosts)",
                               "error_type": "bad_host"}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
