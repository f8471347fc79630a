"""Running the app: uvicorn with the connection guards, within the process's file-descriptor limit, with logs
that cannot flood, until SIGINT/SIGTERM. Either signal is a graceful stop: no new connections, responses get
`Connection: close`, the requests in flight finish, and the process exits 0 (a second SIGINT forces the stop).
The address is bound before uvicorn starts, so a busy port or a bad host is one `error:` line (exit 2)."""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Callable

from hadskip.errors import HadSkipError, require
from hadskip.runtime.serve.config import ServeConfig, is_loopback
from hadskip.runtime.serve.connections import CloseOnShutdown, Connections, guarded_protocol

RESERVED_FDS = 64  # model files, the event loop, logs, ORT: descriptors the connections may not take


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (where allowed); returns the soft limit."""
    try:
        import resource
    except ImportError:  # not a Unix
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def current_fd_limit() -> int:
    try:
        import resource
    except ImportError:  # not a Unix
        return 1 << 16
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_budget(max_connections: int, fd_limit: int | None = None) -> tuple[int, int]:
    """(connections, listen backlog) that fit in `fd_limit` open files with the ones already open: asyncio
    accepts up to `backlog` connections at once, and a few such bursts, before the protocol sees (and may
    close) any of them; running out of descriptors in accept() is what once flooded the log."""
    if fd_limit is None:
        fd_limit = current_fd_limit()
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 0
    backlog = max(16, min(2048, fd_limit // 16))
    room = fd_limit - in_use - 4 * backlog - RESERVED_FDS
    return max(1, min(max_connections, room)), backlog


def make_server(app, config: ServeConfig, log_level: str = "info", fd_limit: int | None = None):
    """A uvicorn.Server for `app` (not started): guarded connections, timeouts, limits from `config`.
    `server.connections` counts what the guards did."""
    uvicorn = require("uvicorn", "serve", "hadskip serve-local")
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    limit, backlog = connection_budget(config.max_connections, fd_limit)
    connections = Connections(limit, body_limit=min(config.max_body_connections, max(1, limit // 2)),
                              body_per_ip=config.max_body_connections_per_ip)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if sig in (signal.SIGTERM, signal.SIGINT) and captured and captured[-1] == sig:
                captured.pop()  # a graceful stop is a normal exit (0), not death by the signal (143, 130)

    server = Server(uvicorn.Config(
        CloseOnShutdown(app, connections), host=config.host, port=config.port,
        http=guarded_protocol(AutoHTTPProtocol, connections,
                                                                       config.header_timeout_s),
        backlog=backlog, timeout_keep_alive=config.keep_alive_s, access_log=config.access_log,
        timeout_graceful_shutdown=int(math.ceil(config.graceful_timeout_s)), server_header=False,
        log_level=log_level))
    server.connections = connections
    return server


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (what uvicorn would bind), or a one-line HadSkipError: a busy port, an
    address this machine does not have, a name that does not resolve."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family, kind, proto, _, address = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise HadSkipError(f"cannot listen on {host}:{port}: the host does not resolve ({_reason(exc)})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses TIME_WAIT ports
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise HadSkipError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None
    sock.set_inheritable(True)
    return sock


def _reason(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).splitlines()[0]


def serve(model_dir: str | Path, config: ServeConfig, warn: Callable[[str], None] | None = None,
          revision: str | None = None) -> None:
    """Load `model_dir` (or a hub repo id, fetched at `revision`: hadskip.runtime.hub) and serve it until
    SIGINT/SIGTERM, which finishes in-flight requests first."""
    require("uvicorn", "serve", "hadskip serve-local")
    require("fastapi", "serve", "hadskip serve-local")
    require("fastapi_offline", "serve", "hadskip serve-local")
    from hadskip.runtime.core import Runtime
    from hadskip.runtime.dial import resolve_knob
    from hadskip.runtime.manifest import load_manifest, manifest_dial
    from hadskip.runtime.serve import logs
    from hadskip.runtime.serve.app import create_app

    from hadskip.runtime.hub import resolve_model

    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    given = str(model_dir)
    model_dir = resolve_model(model_dir, revision)
    name = given if not Path(given).expanduser().exists() else model_dir.name  # a hub repo id names itself
    if config.backend != "torch":
        manifest = load_manifest(model_dir, verify=False)  # a wrong dir fails here in one line; the load checks
        resolve_knob(manifest.route_kind, manifest_dial(manifest), config.budget, str(model_dir),  # the sha256s;
                     manifest.num_layers, (manifest.route or {}).get("teacher_layers"))  # a bad --budget too
        if config.latency_target_ms is not None:  # no dial, or a floor off it: one line before serving
            from hadskip.runtime.serve.latency import LatencyPolicy

            LatencyPolicy.make(config.latency_target_ms, config.min_budget, config.budget, manifest_dial(manifest),
                               str(model_dir))
    sock = bind(config.host, config.port)  # a busy port or a bad host: one line, before anything else is said
    if not is_loopback(config.host):
        warn(f"warning: listening on {config.host} makes the model reachable from other machines"
             + ("" if config.api_key else "; anyone who can reach it may use it (set --api-key)")
             + "; traffic is plain HTTP")

    def load():
        rt = Runtime.load(model_dir, backend=config.backend, threads=config.threads, budget=config.budget)
        rt.predict(["warm up"], batch_size=1)  # first call allocates; also proves the backend runs
        return rt

    failure: list[str] = []
    server = None

    def fatal(message: str) -> None:
        failure.append(message)
        if server is not None:
            server.should_exit = True

    try:
        logs.install()
        app = create_app(config, load, model_name=name, on_fatal=fatal)
        server = make_server(app, config, fd_limit=raise_fd_limit())
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failure:
        raise HadSkipError(failure[0])
