"""Run the tritonserver inside the `nvidia-pytriton` wheel on this machine (tests, benchmarks, a laptop).

    with LocalTriton("repo") as server:             # loopback only, free ports; ready when the block starts
        server.http_url, server.grpc_url, server.metrics_url, server.pid
    # leaving the block stops the server by its PID and removes its /dev/shm regions

The wheel (55 MB, manylinux_2_35) is fetched once with pip into the hadskip cache and read, never installed
(hadskip.assets): it pins numpy<2, which this project's environment does not want. It holds tritonserver 2.51,
the Python backend and one backend stub per Python version; no other backend (onnxruntime, tensorrt) is in it,
which is one reason the hadskip model is a Python-backend model (docs/triton.md).

Facts this module relies on (checked with Triton 2.51 from nvidia-pytriton 0.7.0, CPU only):
- the stub must be <backend-directory>/python/triton_python_backend_stub, next to libtriton_python.so; a copy
  loses its RPATH to the wheel's libraries (the server then waits in "loading" forever), so these are symlinks
  and LD_LIBRARY_PATH names the wheel's libraries as well;
- the stub's embedded Python ignores PYTHONPATH: it uses the `python3` first on PATH (or EXECUTION_ENV_PATH);
- with numpy 2 in that Python, the first BYTES input kills the stub ("unpack_from requires a buffer of at least
  ..." in deserialize_bytes_tensor; the stub's numpy bindings predate numpy 2), so the stub gets a small venv
  of its own in the cache (`stub_env`): numpy 1.26 there, every other package from this interpreter's site dirs;
- a killed server leaves /dev/shm/<prefix>* behind; each server here gets its own prefix and `stop` removes them.
Not included: TLS, auth, several repositories; this is for loopback use, not production (use the NGC container).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hadskip.assets import WheelAsset, cache_dir, extract_folder, wheel_path
from hadskip.errors import HadSkipError

PYTRITON_VERSION = "0.7.0"  # tritonserver 2.51 (NGC 24.10)
SERVER = WheelAsset("nvidia-pytriton", PYTRITON_VERSION, "pytriton/tritonserver/")
LIBS = WheelAsset("nvidia-pytriton", PYTRITON_VERSION, "nvidia_pytriton.libs/")
STUB_NUMPY = WheelAsset("numpy", "1.26.4", "")  # the last numpy 1.x; the stub's bindings need numpy < 2
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class TritonInstall:
    """The unpacked server: binary, bundled libraries, and a backend dir whose python/ fits this Python."""

    server: Path
    libs: Path
    backends: Path


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # several test workers or benchmarks may prepare the cache at once
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _python_tag() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def install() -> TritonInstall:
    """Fetch and unpack the wheel's server once (cache), and link the Python backend for this Python."""
    root = extract_folder(SERVER)  # CACHE/assets/nvidia-pytriton-0.7.0/pytriton/tritonserver
    libs = extract_folder(LIBS)  # ... /nvidia_pytriton.libs: where the binaries' RPATH points
    tag = _python_tag()
    stub = root / "python_backend_stubs" / tag / "triton_python_backend_stub"
    if not stub.is_file():
        raise HadSkipError(f"nvidia-pytriton {PYTRITON_VERSION} has no Python backend stub for Python {tag}")
    python_dir = cache_dir() / "triton" / f"backends-py{tag}" / "python"
    with _locked(python_dir.parent / ".lock"):
        if not (python_dir / ".complete").exists():
            python_dir.mkdir(parents=True, exist_ok=True)
            links = {"libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
                     "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
                     "triton_python_backend_stub": stub}
            for name, to in links.items():
                tmp = python_dir / f".{name}.tmp"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(to)
                tmp.replace(python_dir / name)
            (python_dir / ".complete").touch()
    return TritonInstall(server=root / "bin" / "tritonserver", libs=libs, backends=python_dir.parent)


def stub_env() -> Path:
    """A venv (cache) for the Python stub: numpy 1.26 in its own site-packages, then, through a .pth file,
    every site dir of this interpreter (hadskip, onnxruntime, tokenizers as installed here)."""
    sites = [p for p in site.getsitepackages() if Path(p).is_dir()]
    key = hashlib.sha256(json.dumps([sys.prefix, sys.version, sites]).encode()).hexdigest()[:12]
    env = cache_dir() / "triton" / f"stub-env-py{_python_tag()}-{key}"
    with _locked(env.with_name(env.name + ".lock")):
        if (env / ".complete").exists():
            return env
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(env)], check=True,
                       capture_output=True)
        purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
        wheel = wheel_path(STUB_NUMPY)  # cached like every offline asset: a carried cache works offline
        if f"-cp{sys.version_info[0]}{sys.version_info[1]}-" not in wheel.name:
            raise HadSkipError(f"{wheel} does not fit Python {_python_tag()}; remove it from the cache")
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
               str(purelib), str(wheel)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise HadSkipError(f"could not install {wheel.name} for Triton's Python stub ({last})")
        (purelib / "hadskip_site_dirs.pth").write_text(
            f"import site; list(map(site.addsitedir, {sites!r}))\n")  # exec scope: no comprehension
        (env / ".complete").touch()
    return env


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _children(pid: int) -> set[int]:
    """Direct children of `pid` (the stub processes of a tritonserver), from /proc."""
    out: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out.update(int(c) for c in children.read_text().split())
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class LocalTriton:
    """A tritonserver process serving `repo` on 127.0.0.1 (HTTP, gRPC and metrics on free ports).

    gpu: False adds --pinned-memory-pool-byte-size=0 (there is no CUDA to pin with). python_env: the Python
    the stub runs in (default `stub_env()`). log: where the server's output goes (default: a temp file,
    removed by `stop` unless the start failed). args: more tritonserver arguments.
    """

    repo: str | Path
    gpu: bool = False
    python_env: str | Path | None = None
    log: str | Path | None = None
    args: tuple[str, ...] = ()
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    ports: dict = field(default_factory=dict, init=False)
    shm_prefix: str = field(default="", init=False)
    stubs: set = field(default_factory=set, init=False)  # stub PIDs seen when ready (a crashed server's linger)
    _own_log: bool = field(default=False, init=False, repr=False)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise HadSkipError("the server is not running")
        return self.proc.pid

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def command(self, inst: TritonInstall) -> list[str]:
        cmd = [str(inst.server), f"--model-repository={Path(self.repo).resolve()}",
               f"--backend-directory={inst.backends}",
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
               f"--http-port={self.ports['http']}", f"--grpc-port={self.ports['grpc']}",
               f"--metrics-port={self.ports['metrics']}",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
               "--exit-timeout-secs=10", "--log-verbose=0"]
        if not self.gpu:
            cmd.append("--pinned-memory-pool-byte-size=0")
        return cmd + list(self.args)

    def start(self) -> LocalTriton:
        """Start the server and wait until /v2/health/ready says every model loaded (or raise, log tail)."""
        if self.proc is not None:
            raise HadSkipError("the server is already running")
        if not Path(self.repo).is_dir():
            raise HadSkipError(f"model repository {self.repo} does not exist")
        inst = install()
        env_dir = Path(self.python_env) if self.python_env else stub_env()
        env = dict(os.environ)
        env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        lib_dirs = [str(inst.libs)]
        if sysconfig.get_config_var("Py_ENABLE_SHARED"):  # the stub then loads this Python's own libpython
            lib_dirs.insert(0, str(sysconfig.get_config_var("LIBDIR")))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        # the stub's Python puts its working dir first on sys.path: an empty one, so that no folder named like
        # a package (a checkout's hadskip/, a repository's model folder) shadows the installed packages
        cwd = cache_dir() / "triton" / "empty-cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        if self.log is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log, self._own_log = Path(name), True
        for attempt in range(3):  # a free port can be taken between choosing it and the server binding it
            self.ports = dict(zip(("http", "grpc", "metrics"), _free_ports(3), strict=True))
            self.shm_prefix = f"hadskip_triton_{uuid.uuid4().hex[:12]}_"
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(self.command(inst), stdout=log, stderr=subprocess.STDOUT, env=env,
                                             stdin=subprocess.DEVNULL, cwd=cwd)
            try:
                self._wait_ready()
                self.stubs = _children(self.proc.pid)
                return self
            except HadSkipError:
                busy = "address already in use" in self.log_tail().lower()
                self.stop(keep_log=True)
                if not busy or attempt == 2:
                    raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HadSkipError(f"tritonserver exited with code {self.proc.returncode} while starting "
                                   f"(log {self.log}):\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.2)
        raise HadSkipError(f"tritonserver was not ready within {self.start_timeout_s:.0f} s "
                           f"(log {self.log}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, without its option tables."""
        try:
            text = Path(self.log).read_text(errors="replace").splitlines()
        except (OSError, TypeError):
            return ""
        return "\n".join(t for t in text if not t.startswith(("|", "+")))[-chars:]

    def shm_regions(self) -> list[Path]:
        return sorted(SHM.glob(f"{self.shm_prefix}*")) if self.shm_prefix and SHM.is_dir() else []

    def stop(self, keep_log: bool = False) -> None:
        """SIGTERM the server by its PID (graceful: in-flight requests finish), SIGKILL it after
        stop_timeout_s; then wait for its stub processes and remove its shared-memory regions."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stubs = self.stubs | _children(proc.pid)
        self.stubs = set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in stubs) and time.monotonic() < deadline:
            time.sleep(0.1)  # after a graceful stop the stubs are gone already
        for p in stubs:  # after a crash of the server they linger: they are its children, so ours to end
            if _alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in stubs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for region in self.shm_regions():
            region.unlink(missing_ok=True)
        if self._own_log and not keep_log:
            Path(self.log).unlink(missing_ok=True)
            self.log, self._own_log = None, False

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
