"""`hadskip serve-local` settings (one typed dataclass, every field a CLI option) and the loopback check."""

from __future__ import annotations

import ipaddress
import math
import re
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
    max_connections: int = 2048  # open at once; beyond it the oldest slow body or idle one is closed (lowered to
    # fit the fd limit)
    max_body_connections: int = 512  # connections whose body is still arriving (at most half max_connections)
    max_body_connections_per_ip: int = 128  # the same, per client address
    header_timeout_s: float = 10.0  # from connect (or the end of the last response) to a request's full headers
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    body_timeout_s: float = 30.0  # the longest a body may take to arrive, from the headers (else 408)
    body_base_s: float = 2.0  # a body's deadline: body_base_s + Content-Length / body_min_rate, at most body_timeout_s
    body_min_rate: int = 32768  # bytes per second
    # Host header names answered (RFC 9110 7.2; against DNS rebinding): None = localhost, 127.0.0.1 and [::1] (and
    # the bound address) when bound to loopback, any elsewhere; "*" = any; "*.example.com" = its subdomains
    allowed_hosts: list[str] | None = None

    def __post_init__(self):
        if self.max_queue is None:
            self.max_queue = 32 * self.max_batch
        for name in ("max_batch", "max_queue", "max_inputs", "max_connections", "max_body_connections",
                     "max_body_connections_per_ip", "body_min_rate"):
            if int(getattr(self, name)) < 1:
                raise HadSkipError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise HadSkipError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms}")
        for name in ("header_timeout_s", "keep_alive_s", "body_timeout_s", "body_base_s"):
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
        if self.budget is not None and not math.isfinite(self.budget):
            raise HadSkipError(f"budget must be a finite number of layers, got {self.budget}")
        if self.allowed_hosts is not None:
            self.allowed_hosts = [_host_pattern(h) for h in self.allowed_hosts]

    def host_patterns(self) -> list[str]:
        """The Host header names this server answers to (["*"]: any), for starlette's TrustedHostMiddleware."""
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        if not is_loopback(self.host):
            return ["*"]
        return list(dict.fromkeys(["localhost", "127.0.0.1", "[::1]", _host_pattern(self.host)]))

    def limits(self) -> dict:
        return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms, "max_queue": self.max_queue,
                "max_inputs": self.max_inputs, "max_body_bytes": self.max_body_bytes,
                "max_connections": self.max_connections, "max_body_connections": self.max_body_connections,
                "max_body_connections_per_ip": self.max_body_connections_per_ip,
                "header_timeout_s": self.header_timeout_s, "keep_alive_s": self.keep_alive_s,
                "body_timeout_s": self.body_timeout_s, "body_base_s": self.body_base_s,
                "body_min_rate": self.body_min_rate}

    def body_deadline_s(self, content_length: int | None) -> float:
        """How long a body of `content_length` bytes (None: chunked, unknown) may take to arrive."""
        size = self.max_body_bytes if content_length is None else content_length
        return min(self.body_timeout_s, self.body_base_s + size / self.body_min_rate)


_HOST_NAME = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]*[a-z0-9])?)*\.?")


def _host_pattern(host: str) -> str:
    """One --allowed-hosts entry, checked and normalised: a host name, "*.domain", an IP address ("[...]" for
    IPv6, as in a Host header), or "*"."""
    h = host.strip().lower()
    if h == "*":
        return h
    try:
        ip = ipaddress.ip_address(h[1:-1] if h.startswith("[") and h.endswith("]") else h)
        return f"[{ip}]" if ip.version == 6 else str(ip)
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(h) or len(h) > 253:
        raise HadSkipError(f"allowed host {host!r} is not a host name, '*.domain', an IP address or '*' "
                           "(no ports, paths or other wildcards)")
    return h



def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False
