"""`hadskip serve-local` settings (one typed dataclass, every field a CLI option) and the loopback check."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hadskip.errors import HadSkipError


@dataclass
class ServeConfig:
    """Server settings; every field is a `hadskip serve-local` option."""

    host: str = "127.0.0.1"
    port: int = 8080
    backend: str = "ort-cpu"
    max_batch: int = 32  # rows per runtime call
    max_wait_ms: float = 5.0  # how long the oldest waiting row may wait for others to join its batch
    max_queue: int | None = None  # rows waiting for the worker; None: 32 x max_batch
    api_key: str | None = field(default=None, repr=False)  # bearer token; never printed or returned
    max_inputs: int = 32  # inputs per request
    max_body_bytes: int = 1 << 20  # request body, checked before parsing
    threads: int | None = None  # intra-op threads per ORT session
    budget: float | None = None  # default target average layers through the budget dial (None: trained gates)
    graceful_timeout_s: float = 30.0  # how long shutdown waits for in-flight requests
    access_log: bool = False
    # connections: a client cannot hold the server's sockets or file descriptors
    max_connections: int = 2048  # open at once; beyond it the oldest idle one is closed (lowered to fit the fd limit)
    header_timeout_s: float = 10.0  # from connect (or the end of the last response) to a request's full headers
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    body_timeout_s: float = 30.0  # from the headers to the end of the body (else 408)

    def __post_init__(self):
        if self.max_queue is None:
            self.max_queue = 32 * self.max_batch
        for name in ("max_batch", "max_queue", "max_inputs", "max_connections"):
            if int(getattr(self, name)) < 1:
                raise HadSkipError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise HadSkipError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms}")
        for name in ("header_timeout_s", "keep_alive_s", "body_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise HadSkipError(f"{name} must be in (0, 3600] seconds, got {getattr(self, name)}")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise HadSkipError(f"threads must be an integer >= 1, got {self.threads}")
        if self.max_body_bytes < 64:
            raise HadSkipError(f"max_body_bytes must be >= 64, got {self.max_body_bytes}")
        if not 0 <= self.port <= 65535:
            raise HadSkipError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and (not self.api_key or not self.api_key.isascii() or
                                         not self.api_key.isprintable() or any(c.isspace() for c in self.api_key)):
            raise HadSkipError("the API key must be non-empty printable ASCII without spaces")

    def limits(self) -> dict:
        return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms, "max_queue": self.max_queue,
                "max_inputs": self.max_inputs, "max_body_bytes": self.max_body_bytes,
                "max_connections": self.max_connections, "header_timeout_s": self.header_timeout_s,
                "keep_alive_s": self.keep_alive_s, "body_timeout_s": self.body_timeout_s}


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False
