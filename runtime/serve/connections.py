"""What a client can hold: open connections, and the time it may take to send a request.

uvicorn closes a keep-alive connection that stays idle after a response (`keep_alive_s`), but not one that
never completes its request headers (a slowloris client, or a connect that sends nothing): those would be held
forever. `guarded_protocol` subclasses uvicorn's HTTP protocol (h11 or httptools, whichever uvicorn picks) to
  - close a connection whose request headers have not all arrived `header_timeout_s` after the connect or after
    the end of its previous response (the body has its own timeout: request.read_body answers 408);
  - keep at most `limit` connections open: a new one beyond it closes the oldest idle one (no request in
    progress), or itself when all are busy; so idle connections cannot lock out real clients, and the server
    never runs out of file descriptors (the launcher keeps the limit below the process's fd limit).
`FramingGuard` answers 400 and closes the connection for a request that has both Content-Length and
Transfer-Encoding (RFC 9112 6.3: a request-smuggling pattern; the connection must not be reused).
"""

from __future__ import annotations

import json


class Connections:
    """The open connections of one server, oldest first, and what was done to them."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open: dict = {}  # protocol -> None, in connect order
        self.evicted = self.timed_out = 0

    def add(self, proto) -> bool:
        """Register a new connection; False when it was closed at once (every other one is busy)."""
        self.open[proto] = None
        if len(self.open) <= self.limit:
            return True
        victim = next((p for p in self.open if p is not proto and _idle(p)), proto)
        self.open.pop(victim, None)
        self.evicted += 1
        victim.transport.close()
        return victim is not proto

    def discard(self, proto) -> None:
        self.open.pop(proto, None)


def _idle(proto) -> bool:
    cycle = getattr(proto, "cycle", None)  # the request/response in progress on this connection, if any
    return cycle is None or bool(getattr(cycle, "response_complete", True))


def guarded_protocol(base: type, connections: Connections, header_timeout_s: float) -> type:
    """A subclass of uvicorn's HTTP protocol class `base` with the header timeout and the connection limit."""

    class GuardedProtocol(base):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if connections.add(self):
                self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's headers are due within header_timeout_s too

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
