"""Putting a finished export in place without losing anything: the target rule, the swap, and signals.

Target rule: `--out` may be missing, an empty dir, or a hadskip model dir holding nothing but what an export
writes (manifest.json and the files its manifest lists, in their folders). Ownership is proven by our schema
(the manifest loads as a hadskip manifest) and each file's sha256, not by the shape of a JSON file. Anything
else inside it (a run dir, notes, a symlink, an empty folder, a listed file changed since the export) makes
the export refuse, naming what is in the way, before any work.

Leftovers: temp dirs carry the pid of the export that made them (and a tag of this host and pid namespace);
the next export removes those whose process is gone (a kill -9 cannot run a cleanup), so they never pile up.

Install: the finished temp dir beside the target is renamed into place; an old model dir is first renamed
aside, and then only the files its manifest lists (and folders left empty) are removed, so a file that
appears in it meanwhile is kept (and named in a warning), never deleted.

Signals: while an export runs in the main thread, SIGTERM, SIGINT and SIGHUP raise `Interrupted` (a
BaseException, so no `except Exception` swallows it); the export's `finally` removes its temp dirs, and then
the signal is delivered again to the handler that was there before, so the process still ends the way it
would have (SIGTERM: killed by SIGTERM; SIGINT: KeyboardInterrupt), just without leftovers. Renames and the
cleanup itself run with the signal deferred, so a second signal cannot cut them in half.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import uuid
import warnings
from pathlib import Path

from hadskip.export.spec import ExportError
from hadskip.runtime.manifest import MANIFEST, ManifestError, load_manifest, sha256_file

SHOWN = 3  # how many strangers a refusal names


def _listed(out: Path) -> set[str]:
    """The relative paths the manifest at `out` claims (itself and its "files"), as far as it can be read; what
    is in the way is judged against this list first, ownership is proven after (`_prove_ours`)."""
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {MANIFEST}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
        return {MANIFEST}
    for rel in files:
        if not rel or "\0" in rel or os.path.isabs(rel) or ".." in Path(rel).parts:
            raise ExportError(f"--out {out} has a {MANIFEST} that lists a path outside it ({rel!r}); refusing to "
                              "replace it")
    return {MANIFEST, *(os.path.normpath(k) for k in files)}


def _prove_ours(out: Path) -> None:
    """Ownership is proven by our own schema (the manifest loads as a hadskip manifest) and by the hashes, never
    by the shape of a JSON file: a web app's manifest.json with a "files" object owns nothing, and a listed file
    that changed since the export is the user's now (it is named)."""
    try:
        manifest = load_manifest(out, verify=False)
    except ManifestError:
        raise ExportError(f"--out {out} holds a {MANIFEST} that is not a hadskip model dir's; refusing to replace "
                          "it: give a new or empty directory") from None
    changed = [rel for rel, meta in manifest.files.items()
               if (out / rel).is_file() and sha256_file(out / rel) != meta.get("sha256")]
    if changed:
        shown = ", ".join(changed[:SHOWN]) + (", ..." if len(changed) > SHOWN else "")
        raise ExportError(f"--out {out} holds files changed since they were exported ({shown}); refusing to "
                          "replace them (move them out, or give another --out)")


def _strangers(out: Path, owned: set[str], limit: int = SHOWN) -> list[str]:
    """Up to `limit` entries under `out` that an export did not write (symlinks never: export writes none)."""
    folders = {str(p) for rel in owned for p in Path(rel).parents if str(p) != "."}
    found: list[str] = []

    def scan(d: Path, prefix: str) -> None:
        with os.scandir(d) as it:
            for entry in sorted(it, key=lambda e: e.name):
                if len(found) >= limit:
                    return
                rel = prefix + entry.name
                if entry.is_symlink():
                    found.append(rel + " (a symlink)")
                elif entry.is_dir(follow_symlinks=False):
                    if rel in folders:
                        scan(Path(entry.path), rel + "/")
                    else:
                        found.append(rel + "/")
                elif rel not in owned or not entry.is_file(follow_symlinks=False):
                    found.append(rel)

    scan(out, "")
    return found


def check_target(out: Path) -> set[str]:
    """Refuse an `out` that is a file or holds anything an export did not write; returns the paths an old
    model dir there owns (empty for a missing or empty dir), the only ones `install` will remove."""
    if out.is_symlink() and not out.exists():
        raise ExportError(f"--out {out} is a dangling symlink; give a directory")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return set()
    if not (out / MANIFEST).is_file() or (out / MANIFEST).is_symlink():
        raise ExportError(f"--out {out} exists and is not a hadskip model dir (no {MANIFEST}); refusing to replace "
                          "it: give a new or empty directory")
    owned = _listed(out)
    strangers = _strangers(out, owned)
    if strangers:
        more = ", ..." if len(strangers) == SHOWN else ""
        raise ExportError(f"--out {out} holds files export did not write: {', '.join(strangers)}{more}; refusing to "
                          "replace it (move them out, or give another --out)")
    _prove_ours(out)
    return owned


class CleanupNote(UserWarning):
    """Temp dirs that killed exports left behind were found and removed (the CLI shows one `note:` line)."""


def _host_tag() -> str:
    """8 hex digits naming this host and pid namespace: temp dirs carry it beside their pid, so an export never
    judges (or removes) a dir made on another machine sharing the folder, or in another container."""
    import hashlib
    import socket

    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return hashlib.sha1(f"{socket.gethostname()}:{ns}".encode()).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or not a pid we can judge): not ours to remove
    return True


def _stale(folder: Path, pattern: re.Pattern) -> list[Path]:
    """Dirs in `folder` whose name matches `pattern` (group 1: the pid that made them) and whose process is gone."""
    found = []
    with contextlib.suppress(OSError), os.scandir(folder) as it:
        for entry in it:
            m = pattern.fullmatch(entry.name)
            if m and entry.is_dir(follow_symlinks=False) and not _pid_alive(int(m.group(1))):
                found.append(Path(entry.path))
    return found


def sweep_stale(out: Path) -> int:
    """Remove what exports killed without cleanup (kill -9, a power cut) left: the temp dirs beside `out` and the
    scratch dirs in the system temp dir, each named with the pid that made it, whose process no longer runs.
    Returns the bytes freed. A dir whose process still runs (a concurrent export) is left alone."""
    tag = _host_tag()
    beside = re.compile(re.escape(f".{out.name}.hx{tag}-") + r"(\d+)-[A-Za-z0-9_]+\.tmp")
    scratch = re.compile(re.escape(f"hadskip-export-hx{tag}-") + r"(\d+)-[A-Za-z0-9_]+")
    freed = 0
    for d in _stale(out.parent, beside) + _stale(Path(tempfile.gettempdir()), scratch):
        freed += sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(d, ignore_errors=True)
    if freed:
        warnings.warn(f"removed {freed / 1e6:.1f} MB of temp dirs left by an export that was killed", CleanupNote,
                      stacklevel=2)
    return freed


def temp_dirs(out: Path) -> tuple[Path, Path]:
    """(a temp dir beside `out` that the model dir is built in, a scratch dir in the system temp dir); both
    names carry this process's pid, so a later export can tell a killed export's leftovers (`sweep_stale`)."""
    pid = f"hx{_host_tag()}-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{pid}-", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise ExportError(f"cannot write the model dir {out}: {exc.strerror or exc} ({exc.filename or out.parent})"
                          ) from exc
    tmp.chmod(0o755)  # mkdtemp makes it private; the model dir is meant to be shared and served
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f"hadskip-export-{pid}-"))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"cannot create a scratch dir in {tempfile.gettempdir()}: {exc.strerror or exc}") from exc
    return tmp, scratch


def install(tmp: Path, out: Path) -> None:
    """Rename `tmp` into place. An old model dir at `out` is checked again, moved aside, and then only the files
    it owned are removed; anything else found there by then is kept where it was moved, with a warning."""
    if not out.exists():
        try:
            tmp.rename(out)
        except OSError as exc:
            raise ExportError(f"cannot move the export into place at {out}: {exc.strerror or exc}") from exc
        return
    owned = check_target(out)
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        out.rename(old)
    except OSError as exc:
        raise ExportError(f"cannot move the old model dir {out} aside: {exc.strerror or exc}") from exc
    try:
        tmp.rename(out)
    except OSError as exc:
        old.rename(out)  # put the old model dir back
        raise ExportError(f"cannot move the export into place at {out}: {exc.strerror or exc}") from exc
    for rel in sorted(owned):
        p = old / rel
        if p.is_file() and not p.is_symlink():
            p.unlink()
    for folder in sorted((p for p in old.rglob("*") if p.is_dir() and not p.is_symlink()),
                         key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: something export did not write
            folder.rmdir()
    try:
        old.rmdir()
    except OSError:
        warnings.warn(f"files that appeared in {out} during the export were kept in {old}", stacklevel=3)


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, a signal, not an error
    """A signal arrived during an export; the export cleans up, then the signal is delivered again."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """Turns SIGTERM / SIGINT / SIGHUP into `Interrupted` while active (main thread only; else a no-op)."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))

    def __init__(self):
        self.previous: dict[int, object] = {}
        self.received: int | None = None
        self.raised = False
        self.deferring = 0

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                old = signal.getsignal(sig)
                if old in (signal.SIG_IGN, None):  # ignored on purpose, or set outside Python: leave it
                    continue
                self.previous[sig] = old
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            return  # already stopping: let the cleanup finish
        self.received = signum
        if not self.deferring:
            self.raised = True
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        """A section a signal must not cut in half (renames, cleanup): the signal takes effect after it."""
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
            if not self.deferring and self.received is not None and not self.raised:
                self.raised = True
                raise Interrupted(self.received)

    def __exit__(self, exc_type, exc, tb) -> bool:
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous.clear()
        if self.received is None:
            return False
        signal.raise_signal(self.received)  # the previous handler runs now: default SIGTERM ends the process
        name = signal.Signals(self.received).name
        raise ExportError(f"export interrupted by {name}; its temp files were removed") from None
