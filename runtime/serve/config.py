"""`hadskip serve-local` settings (one typed dataclass, every field a CLI option) and the loopback check."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field

from hadskip.errors import HadSkipError
from hadskip.runtime.backends import check_count
from hadskip.runtime.serve.latency import check_settings


def _opt(default, help: str, **meta):
    """A field whose CLI option (cli/options.py) shows `help`; the default and the help live only here."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class ServeConfig:
    """Server settings; every field is a `hadskip serve-local` option (generated from the field)."""

    host: str = _opt("127.0.0.1", "Address to bind. Loopback by default; any other prints a warning.")
    port: int = _opt(8080, "TCP port (0: any free one).")
    backend: str = _opt("ort-cpu", "Runtime backend (`hadskip predict --help` lists them): ort-cpu, ort-cuda (extra "
                                   "gpu), trt (extra trt) or a plug-in such as torch.")
    max_batch: int = _opt(32, "Rows per runtime call; requests are merged up to this.")
    max_wait_ms: float = _opt(5.0, "How long the oldest queued request waits for others to join its batch.")
    max_queue: int | None = _opt(None, "Rows that may wait; beyond it requests get 429 (default 32 x max-batch).")
    api_key: str | None = field(default=None, repr=False, metadata={  # never printed or returned
        "help": "Require 'Authorization: Bearer KEY' on /predict, /info and /metrics (/health and /docs stay "
                "open). Prefer the env var: arguments show in `ps`.", "envvar": "HADSKIP_API_KEY",
        "show_default": False})
    max_inputs: int = _opt(32, "Inputs per request (more: 413).")
    max_body_bytes: int = _opt(1 << 20, "Request body limit in bytes, checked before parsing (more: 413).")
    threads: int | None = _opt(None, "Intra-op threads per onnxruntime session (default: ORT's).")
    budget: float | None = _opt(None, "Default target average layers through the model's budget dial (`hadskip "
                                      "dial`, then export); a request's \"budget\" field overrides it. Default: the "
                                      "trained gates.")
    latency_target_ms: float | None = _opt(
        None, "Latency target (queue wait + inference): when the queue would break it, queued requests run at a "
              "lower budget through the model's dial (needs `hadskip dial` before export) instead of waiting; "
              "each answer says the budget it ran at. Default: off (requests wait; --max-queue answers 429).")
    min_budget: float | None = _opt(None, "The lowest budget --latency-target-ms may lower to (default: the dial's "
                                          "lowest point).")
    api: str = _opt("hadskip", "The request/answer format: 'hadskip' (POST /predict as documented) or 'tei' "
                               "(text-embeddings-inference's: POST / /predict /invocations take TEI's input grammar "
                               "and answer [{label, score}]; GET / /ping /health; TEI's /info and errors).")
    graceful_timeout_s: float = _opt(30.0, "How long a shutdown waits for the requests in flight.")
    access_log: bool = _opt(False, "Log every request (uvicorn's access log).")
    # connections: a client cannot hold the server's sockets or file descriptors
    max_connections: int = _opt(2048, "Open connections at most (lowered to fit the fd limit); a new one beyond it "
                                      "closes the oldest slow body, else the oldest idle one.")
    max_body_connections: int = _opt(512, "Connections whose request body is still arriving, at most (and half "
                                          "--max-connections); one more closes the oldest.")
    max_body_connections_per_ip: int = _opt(128, "The same, per client address.")
    header_timeout_s: float = _opt(10.0, "Seconds a connection may take to send a request's headers (from the "
                                         "connect or the last response); then it is closed.")
    keep_alive_s: float = _opt(5.0, "Seconds an idle keep-alive connection stays open.")
    body_timeout_s: float = _opt(30.0, "The most seconds a request body may take to arrive (else 408).")
    body_base_s: float = _opt(2.0, "A body's deadline is this plus Content-Length / --body-min-rate, at most "
                                   "--body-timeout-s.")
    body_min_rate: int = _opt(32768, "Bytes per second a body must arrive at (see --body-base-s).")
    # Host header names answered (RFC 9110 7.2; against DNS rebinding): None = localhost, 127.0.0.1 and [::1] (and
    # the bound address) when bound to loopback, any elsewhere; "*" = any; "*.example.com" = its subdomains
    allowed_hosts: list[str] | str | None = _opt(
        None, "Comma-separated Host header names to answer (against DNS rebinding), e.g. 'api.example,*.internal'; "
              "'*' for any. Default: localhost, 127.0.0.1 and [::1] when bound to loopback, any otherwise.",
        cli_type=str | None)

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
        if self.threads is not None:  # refused at start-up, before the model loads in the background
            check_count("threads", self.threads, 1)
        if self.max_body_bytes < 64:
            raise HadSkipError(f"max_body_bytes must be >= 64, got {self.max_body_bytes}")
        if not 0 <= self.port <= 65535:
            raise HadSkipError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and (not self.api_key or not self.api_key.isascii() or
                                         not self.api_key.isprintable() or any(c.isspace() for c in self.api_key)):
            raise HadSkipError("the API key must be non-empty printable ASCII without spaces")
        if self.budget is not None and not math.isfinite(self.budget):
            raise HadSkipError(f"budget must be a finite number of layers, got {self.budget}")
        check_settings(self.latency_target_ms, self.min_budget)
        if isinstance(self.allowed_hosts, str):  # the CLI's comma-separated form
            self.allowed_hosts = self.allowed_hosts.split(",")
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
