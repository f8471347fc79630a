"""A `hadskip serve-local` subprocess for the loopback benchmarks (load_test, bounded_cost, triton_load).

`start` launches the CLI command (so it measures what users run), waits for `/health` to answer 200 and
returns the process; `stop` ends it by PID with SIGTERM (graceful: in-flight requests finish), then SIGKILL.
"""

from __future__ import annotations

import http.client
import os
import signal
import resource
import subprocess
import sys
import time
from pathlib import Path


def health(host: str, port: int) -> int:
    """HTTP status of GET /health, or 0 when nothing answers yet."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def start(model: str | Path, host: str, port: int, options: list[str], logfile: Path,
          timeout_s: float) -> subprocess.Popen:
    """serve-local on MODEL at host:port with extra CLI `options`; stdout/stderr to `logfile`."""
    cmd = [sys.executable, "-m", "hadskip.cli", "serve-local", str(model), "--host", host, "--port", str(port),
           *options]
    env = {k: v for k, v in os.environ.items() if k != "HADSKIP_API_KEY"}  # the benchmarks send no key
    with open(logfile, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    while health(host, port) != 200:
        if proc.poll() is not None:
            raise SystemExit(f"serve-local exited with {proc.returncode}:\n{logfile.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"serve-local was not ready within {timeout_s} s")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> int:
    """SIGTERM, wait, then SIGKILL; the exit status (0 after a graceful stop)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def raise_fd_limit(need: int) -> int:
    """Raise this process's soft open-file limit to `need` (within the hard one); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft
