"""Putting a finished export in place without losing anything: the target rule, the swap, and signals.

Target rule: `--out` may be missing, an empty dir, or a hadskip model dir holding nothing but what an export
writes (manifest.json and the files its manifest lists, in their folders). Anything else inside it (a run
dir, notes, a symlink, an empty folder) makes the export refuse, naming what is in the way, before any work.

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
import shutil
import signal
import tempfile
import threading
import uuid
import warnings
from pathlib import Path

from hadskip.export.spec import ExportError
from hadskip.runtime.manifest import MANIFEST

SHOWN = 3  # how many strangers a refusal names


def _owned(out: Path) -> set[str]:
    """The relative paths an export wrote into the model dir `out` (its manifest, and the files listed there)."""
    f = out / MANIFEST
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"--out {out} has a {MANIFEST} that cannot be read ({type(exc).__name__}); "
                          "refusing to replace it") from exc
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
        raise ExportError(f"--out {out} has a {MANIFEST} without a file list; refusing to replace it")
    for rel in files:
        if not rel or "\0" in rel or os.path.isabs(rel) or ".." in Path(rel).parts:
            raise ExportError(f"--out {out} has a {MANIFEST} that lists a path outside it ({rel!r}); refusing to "
                              "replace it")
    return {MANIFEST, *(os.path.normpath(k) for k in files)}


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
    owned = _owned(out)
    strangers = _strangers(out, owned)
    if strangers:
        more = ", ..." if len(strangers) == SHOWN else ""
        raise ExportError(f"--out {out} holds files export did not write: {', '.join(strangers)}{more}; refusing to "
                          "replace it (move them out, or give another --out)")
    return owned


def temp_dirs(out: Path) -> tuple[Path, Path]:
    """(a temp dir beside `out` that the model dir is built in, a scratch dir in the system temp dir)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise ExportError(f"cannot write the model dir {out}: {exc.strerror or exc} ({exc.filename or out.parent})"
                          ) from exc
    tmp.chmod(0o755)  # mkdtemp makes it private; the model dir is meant to be shared and served
    try:
        scratch = Path(tempfile.mkdtemp(prefix="hadskip-export-"))
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
